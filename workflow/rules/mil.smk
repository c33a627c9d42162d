# MIL: folds per task, one model per task x encoder x method x fold, then mean +- std over folds.
#
# Methods with a teacher (MHIM) start from the baseline trained on the same fold, so the DAG
# trains every baseline fold first and hands its checkpoint over with --teacher-init.

MIL = config["mil"]


localrules:
    splits,
    evaluate,


rule splits:
    input:
        table=lambda w: TASKS[w.task]["table"],
    output:
        f"{RESULTS}/splits/{{task}}.csv",
    log:
        f"{RESULTS}/logs/splits/{{task}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/splits/{{task}}.tsv"
    conda:
        "../../envs/mil.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        task_type=lambda w: TASKS[w.task]["type"],
        folds=MIL["folds"],
        seed=MIL["seed"],
        val_fraction=MIL["val_fraction"],
        bins=MIL["survival_bins"],
    shell:
        "wsi-mil splits {input.table:q} -o {output:q} --task-type {params.task_type}"
        " --folds {params.folds} --seed {params.seed} --val-fraction {params.val_fraction}"
        " --survival-bins {params.bins} > {log:q} 2>&1"


# the files the train command writes into its output folder
TRAIN_OUTPUT = {
    key: f"{RESULTS}/mil/{{task}}/{{encoder}}/{{method}}/fold{{fold}}/{name}"
    for key, name in [
        ("model", "model.pt"),
        ("model_json", "model.json"),
        ("history", "history.csv"),
        ("predictions", "predictions.csv"),
        ("metrics", "metrics.json"),
    ]
}
TRAIN_PARAMS = {
    "features": lambda w, input: os.path.dirname(input.features[0]),
    "outdir": lambda w, output: os.path.dirname(output.metrics),
    "task_type": lambda w: TASKS[w.task]["type"],
    "config": EFFECTIVE_CONFIG,
    "settings": settings_digest("mil", drop=("methods",)),
}
TRAIN_SHELL = (
    "wsi-mil train --features {params.features:q} --labels {input.table:q}"
    " --slides-table {input.slides_table:q} --splits {input.splits:q} --fold {wildcards.fold}"
    " --method {wildcards.method} --task-type {params.task_type} -o {params.outdir:q}"
    " {params.teacher} --threads {threads} --config {params.config:q} > {log:q} 2>&1"
)


rule train:
    input:
        unpack(train_inputs),
    output:
        **TRAIN_OUTPUT,
    log:
        f"{RESULTS}/logs/train/{{task}}/{{encoder}}/{{method}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{task}}/{{encoder}}/{{method}}/fold{{fold}}.tsv"
    wildcard_constraints:
        method=alternatives(BASELINE_METHODS),
    conda:
        "../../envs/mil.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        **TRAIN_PARAMS,
        teacher="",
    shell:
        TRAIN_SHELL


rule train_with_teacher:
    input:
        unpack(train_inputs),
    output:
        **TRAIN_OUTPUT,
    log:
        f"{RESULTS}/logs/train/{{task}}/{{encoder}}/{{method}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_with_teacher/{{task}}/{{encoder}}/{{method}}/fold{{fold}}.tsv"
    wildcard_constraints:
        method=alternatives(STUDENT_METHODS),
    conda:
        "../../envs/mil.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        **TRAIN_PARAMS,
        teacher=lambda w, input: f"--teacher-init {shlex.quote(os.path.dirname(input.teacher))}",
    shell:
        TRAIN_SHELL


rule evaluate:
    input:
        lambda w: [
            f"{fold_dir(w.task, w.encoder, w.method, k)}/metrics.json" for k in FOLDS
        ],
    output:
        report(
            f"{RESULTS}/mil/{{task}}/{{encoder}}/{{method}}/summary.json",
            caption="../report/summary_json.rst",
            category="Models",
            subcategory="{task}",
            labels={"encoder": "{encoder}", "method": "{method}"},
        ),
    log:
        f"{RESULTS}/logs/evaluate/{{task}}/{{encoder}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{task}}/{{encoder}}/{{method}}.tsv"
    conda:
        "../../envs/mil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        dirs=lambda w, input: " ".join(shlex.quote(os.path.dirname(p)) for p in input),
    shell:
        "wsi-mil evaluate {params.dirs} -o {output:q} > {log:q} 2>&1"
