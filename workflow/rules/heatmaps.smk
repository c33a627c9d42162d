# Heatmaps: per task x encoder x method, every slide scored by the fold model whose test part held it
# (out of fold), with its picture and top-patch gallery. One job per task x encoder x method loads each
# fold model once; its output is the whole folder (a directory output, so Snakemake removes a stale
# one before the job and a failed job leaves none), with index.json written last by the command.
# Paths come from OUT (pipeline/layout.py); the logic is `wsi-mil heatmaps`.


rule heatmaps:
    input:
        unpack(heatmap_inputs),
    output:
        report(
            directory(OUT.heatmap_dir("{task}", "{encoder}", "{method}")),
            patterns=["{picture}.png"],
            caption="../report/heatmaps.rst",
            category="Heatmaps",
            subcategory="{task}",
            labels={
                "encoder": "{encoder}",
                "method": "{method}",
                "picture": "{picture}",
            },
        ),
    log:
        OUT.log("heatmaps", "{task}", "{encoder}", "{method}"),
    benchmark:
        OUT.benchmark("heatmaps", "{task}", "{encoder}", "{method}")
    wildcard_constraints:
        encoder=alternatives(ENCODERS),
        method=alternatives(TRAINED_METHODS),
    conda:
        "../../envs/mil.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        features=lambda w: OUT.features_dir(w.encoder),
        folds=lambda w, input: " ".join(
            shlex.quote(os.path.dirname(p)) for p in input.folds
        ),
        task_type=lambda w: TASKS[w.task]["type"],
        masks=masks_flag,
        config=EFFECTIVE_CONFIG,
        settings=settings_digest("heatmaps", "mil", drop=("methods",)),
    shell:
        "wsi-mil heatmaps --features {params.features:q} --labels {input.table:q}"
        " --slides-table {input.slides_table:q} --splits {input.splits:q}"
        " --method {wildcards.method:q} --task-type {params.task_type} --folds {params.folds}"
        " {params.masks} -o {output:q} --threads {threads} --config {params.config:q} --device cpu"
        " > {log:q} 2>&1"


# The external cohort of a task (its `external` part): every slide scored by one model — the
# all-cases model when mil.external_all_cases trains one, else the first fold model — with the same
# score stores, pictures and galleries (`wsi-mil predict --heatmaps`). No localisation: external
# cohorts have no masks here.
rule external_heatmaps:
    input:
        unpack(external_heatmap_inputs),
    output:
        directory(OUT.external_heatmap_dir("{task}", "{encoder}", "{method}")),
    log:
        OUT.log("external_heatmaps", "{task}", "{encoder}", "{method}"),
    benchmark:
        OUT.benchmark("external_heatmaps", "{task}", "{encoder}", "{method}")
    wildcard_constraints:
        task=alternatives(EXTERNAL_SLIDES),
        encoder=alternatives(ENCODERS),
        method=alternatives(TRAINED_METHODS),
    conda:
        "../../envs/mil.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        model=lambda w, input: os.path.dirname(input.model),
        features=lambda w: OUT.features_dir(w.encoder),
        slides_table=lambda w, input: (
            f"--slides-table {shlex.quote(input.slides_table)}"
            if "slides_table" in input.keys()
            else ""
        ),
        config=EFFECTIVE_CONFIG,
        settings=settings_digest("heatmaps"),
    shell:
        "wsi-mil predict --model {params.model:q} --features {params.features:q}"
        " --labels {input.table:q} {params.slides_table} -o {output:q}/predictions.csv"
        " --heatmaps {output:q} --config {params.config:q} --device cpu > {log:q} 2>&1"
