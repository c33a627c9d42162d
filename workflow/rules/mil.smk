# MIL: folds per task (per repeat with mil.repeats > 1), one model per task x encoder x method (or
# variant) x [repeat x] fold, then the summary over folds with its intervals.
#
# Methods with a teacher (MHIM) start from the baseline trained on the same fold, so the DAG
# trains every baseline fold first and hands its checkpoint over with --teacher-init; a variant
# (mil.variants) uses its base method's baseline, i.e. the same checkpoints as the full method.
# Paths come from OUT (pipeline/layout.py); the repeat folder exists only with mil.repeats > 1.

MIL = config["mil"]
# the last parts of a train job's log and benchmark paths: [repeat{r}/]fold{k}
FOLD_PARTS = [*([repeat_name(REPEAT)] if REPEAT else []), fold_name("{fold}")]


localrules:
    splits,
    evaluate,
    external_evaluate,
    external_evaluate_all_cases,


rule splits:
    input:
        table=lambda w: TASKS[w.task]["table"],
    output:
        OUT.splits("{task}", REPEAT),
    log:
        OUT.log("splits", "{task}", *([repeat_name(REPEAT)] if REPEAT else [])),
    benchmark:
        OUT.benchmark("splits", "{task}", *([repeat_name(REPEAT)] if REPEAT else []))
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
        repeat=lambda w: f"--repeat {w.repeat}" if REPEAT else "",
        # the folds are checked against the inner selection they will be trained with (none under paper)
        selection="holdout" if MIL["protocol"] == "paper" else MIL["selection"],
        inner_folds=MIL["inner_folds"],
    shell:
        "wsi-mil splits {input.table:q} -o {output:q} --task-type {params.task_type}"
        " --folds {params.folds} --seed {params.seed} --val-fraction {params.val_fraction}"
        " --survival-bins {params.bins} {params.repeat} --selection {params.selection}"
        " --inner-folds {params.inner_folds} > {log:q} 2>&1"


# One model per task x encoder x method x fold. A method with a teacher (MHIM) also declares its
# baseline's checkpoint of the same fold as input (train_inputs), so that baseline trains first.
rule train:
    input:
        unpack(train_inputs),
    output:
        **OUT.fold_files("{task}", "{encoder}", "{method}", "{fold}", REPEAT),
    log:
        OUT.log("train", "{task}", "{encoder}", "{method}", *FOLD_PARTS),
    benchmark:
        OUT.benchmark("train", "{task}", "{encoder}", "{method}", *FOLD_PARTS)
    wildcard_constraints:
        encoder=alternatives(ENCODERS),
        method=alternatives(TRAINED_METHODS),
    conda:
        "../../envs/mil.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        features=lambda w: OUT.features_dir(w.encoder),
        outdir=lambda w, output: os.path.dirname(output.metrics),
        task_type=lambda w: TASKS[w.task]["type"],
        teacher=teacher_flag,
        config=EFFECTIVE_CONFIG,
        settings=train_settings_digest,
    shell:
        "wsi-mil train --features {params.features:q} --labels {input.table:q}"
        " --slides-table {input.slides_table:q} --splits {input.splits:q} --fold {wildcards.fold}"
        " --method {wildcards.method:q} --task-type {params.task_type} -o {params.outdir:q}"
        " {params.teacher} --threads {threads} --config {params.config:q} > {log:q} 2>&1"


rule evaluate:
    input:
        lambda w: method_fold_files(w.task, w.encoder, w.method),
    output:
        report(
            OUT.summary_json("{task}", "{encoder}", "{method}"),
            caption="../report/summary_json.rst",
            category="Models",
            subcategory="{task}",
            labels={"encoder": "{encoder}", "method": "{method}"},
        ),
    log:
        OUT.log("evaluate", "{task}", "{encoder}", "{method}"),
    benchmark:
        OUT.benchmark("evaluate", "{task}", "{encoder}", "{method}")
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


# External validation: each fold model predicts the task's external cohort (`wsi-mil predict`),
# then the same statistics over the fold models and on their ensemble. Heatmaps of external slides
# can hang off OUT.external_predictions / EXTERNAL_SLIDES.
rule external_predict:
    input:
        unpack(external_inputs),
    output:
        csv=OUT.external_predictions(
            "{task}", "{encoder}", "{method}", "{fold}", REPEAT
        ),
        json=OUT.external_metrics("{task}", "{encoder}", "{method}", "{fold}", REPEAT),
    log:
        OUT.log("external", "{task}", "{encoder}", "{method}", *FOLD_PARTS),
    benchmark:
        OUT.benchmark("external", "{task}", "{encoder}", "{method}", *FOLD_PARTS)
    wildcard_constraints:
        task=alternatives(EXTERNAL_SLIDES),
        encoder=alternatives(ENCODERS),
        method=alternatives(TRAINED_METHODS),
    conda:
        "../../envs/mil.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        model=lambda w, input: os.path.dirname(input.model),
        features=lambda w: OUT.features_dir(w.encoder),
        slides_table=lambda w, input: (
            f"--slides-table {shlex.quote(input.slides_table)}"
            if "slides_table" in input.keys()
            else ""
        ),
    shell:
        "wsi-mil predict --model {params.model:q} --features {params.features:q}"
        " --labels {input.table:q} {params.slides_table} -o {output.csv:q}"
        " --metrics {output.json:q} > {log:q} 2>&1"


rule external_evaluate:
    input:
        lambda w: external_files(w.task, w.encoder, w.method),
    output:
        OUT.external_summary("{task}", "{encoder}", "{method}"),
    log:
        OUT.log("external_evaluate", "{task}", "{encoder}", "{method}"),
    benchmark:
        OUT.benchmark("external_evaluate", "{task}", "{encoder}", "{method}")
    wildcard_constraints:
        task=alternatives(EXTERNAL_SLIDES),
    conda:
        "../../envs/mil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "wsi-mil evaluate --external {input:q} -o {output:q} > {log:q} 2>&1"


# mil.external_all_cases: one model per task x encoder x method trained on every case for the
# median best epoch of the method's CV folds (all repeats), then predicting the external cohort
# like a fold model. An MHIM method's teacher is its baseline's all-cases model.
rule train_all_cases:
    input:
        unpack(all_cases_inputs),
    output:
        **{
            k: OUT.all_cases_file("{task}", "{encoder}", "{method}", k)
            for k in FOLD_FILES
        },
    log:
        OUT.log("train_all_cases", "{task}", "{encoder}", "{method}"),
    benchmark:
        OUT.benchmark("train_all_cases", "{task}", "{encoder}", "{method}")
    wildcard_constraints:
        task=alternatives(EXTERNAL_SLIDES),
        encoder=alternatives(ENCODERS),
        method=alternatives(TRAINED_METHODS),
    conda:
        "../../envs/mil.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        features=lambda w: OUT.features_dir(w.encoder),
        outdir=lambda w, output: os.path.dirname(output.metrics),
        task_type=lambda w: TASKS[w.task]["type"],
        folds=lambda w, input: " ".join(
            shlex.quote(os.path.dirname(p)) for p in input.folds
        ),
        teacher=teacher_flag,
        config=EFFECTIVE_CONFIG,
        settings=train_settings_digest,
    shell:
        "wsi-mil train-all-cases --features {params.features:q} --labels {input.table:q}"
        " --slides-table {input.slides_table:q} --folds {params.folds}"
        " --method {wildcards.method:q} --task-type {params.task_type} -o {params.outdir:q}"
        " {params.teacher} --threads {threads} --config {params.config:q} > {log:q} 2>&1"


use rule external_predict as external_predict_all_cases with:
    input:
        unpack(all_cases_external_inputs),
    output:
        csv=OUT.external_all_cases("{task}", "{encoder}", "{method}", "csv"),
        json=OUT.external_all_cases("{task}", "{encoder}", "{method}", "json"),
    log:
        OUT.log("external_all_cases", "{task}", "{encoder}", "{method}"),
    benchmark:
        OUT.benchmark("external_all_cases", "{task}", "{encoder}", "{method}")


use rule external_evaluate as external_evaluate_all_cases with:
    input:
        OUT.external_all_cases("{task}", "{encoder}", "{method}", "csv"),
    output:
        OUT.external_all_cases_summary("{task}", "{encoder}", "{method}"),
    log:
        OUT.log("external_evaluate_all_cases", "{task}", "{encoder}", "{method}"),
    benchmark:
        OUT.benchmark("external_evaluate_all_cases", "{task}", "{encoder}", "{method}")
