# Feature extraction: one store per slide and encoder (results/features/{encoder}/{slide}.zarr),
# computed by group jobs of features.slides_per_job slides, so the model is loaded once per group.
#
# Why two rules. Snakemake deletes all outputs of a job before running it and after it fails, so a
# rule whose outputs were a group's stores would throw away the finished slides of a killed group
# job, and re-embed a whole group when one slide is added to it. Instead:
#   extract_batch  embeds a group of slides into staging/features/{encoder}/{slide}.zarr (not
#                  Snakemake outputs, so never deleted by it); its output is a small summary
#                  written when every slide of the group is done. Re-run after a kill, it keeps the
#                  staged stores that answer the same request (--skip-done) and embeds the rest.
#   extract        the declared per-slide store: moves the staged store into place (a rename), or
#                  embeds the slide on its own when no group staged it (e.g. a store to be redone
#                  because its settings changed).
# Groups are formed when the workflow is parsed, from the slides that have no store and are in no
# group yet (sorted ids, slides_per_job at a time), named by a hash of their members and written to
# staging/features/{encoder}/group-ID.members; every later parse (also a cluster job's) reads them
# back, so a slide keeps its group for good and its extract job the same inputs on every run. Adding
# slides forms new groups of only the new slides. Asking for one slide's store runs its group (the
# other slides wait, staged, and are moved into place by the next run without embedding). A group
# whose inputs change (re-tiled slides, other weights) re-embeds its slides with one model load.
# Keep results/staging/: its .members and .json files are small, the staged stores are moved out.


include: "feature_groups.smk"


rule extract_batch:
    input:
        slides=lambda w: [SLIDES[s] for s in group_members(w)],
        tiles=lambda w: [OUT.tiles(s) for s in group_members(w)],
    output:
        OUT.group_summary("{encoder}", "{group}"),
    log:
        OUT.log("extract_batch", "{encoder}", "group-{group}"),
    benchmark:
        OUT.benchmark("extract_batch", "{encoder}", "group-{group}")
    wildcard_constraints:
        encoder=alternatives(ENCODERS),
        group="[0-9a-f]{12}",
    conda:
        "../../envs/features.yaml"
    # decoding workers plus the model's own thread(s)
    threads: FEATURES["workers"] + 1
    resources:
        gpu=EXTRACT_GPU,
        mem_mb=16000,
        runtime=lambda w: 30 + 15 * len(group_members(w)),
    params:
        jobs=group_arguments,
        weights=lambda w: FEATURES["weights"].get(w.encoder, "pretrained"),
        record_failure=(
            "--record-failure" if config["workflow"]["record_failures"] else ""
        ),
        config=EFFECTIVE_CONFIG,
        settings=extract_settings,
    shell:
        "wsi-mil extract {params.jobs} --skip-done --done {output:q}"
        " --encoder {wildcards.encoder:q} --weights {params.weights:q}"
        " {params.record_failure} --config {params.config:q} > {log:q} 2>&1"


rule extract:
    input:
        slide=lambda w: SLIDES[w.slide],
        tiles=OUT.tiles("{slide}"),
        group=group_input,
    output:
        directory(OUT.features("{encoder}", "{slide}")),
    log:
        OUT.log("extract", "{encoder}", "{slide}"),
    benchmark:
        OUT.benchmark("extract", "{encoder}", "{slide}")
    wildcard_constraints:
        encoder=alternatives(ENCODERS),
    conda:
        "../../envs/features.yaml"
    threads: lambda w: 1 if w.slide in GROUP_OF[w.encoder] else FEATURES["workers"] + 1
    # a staged slide is only moved into place; one that no group staged is embedded here
    resources:
        gpu=lambda w: 0 if w.slide in GROUP_OF[w.encoder] else EXTRACT_GPU,
        mem_mb=lambda w: 1000 if w.slide in GROUP_OF[w.encoder] else 16000,
        runtime=lambda w: 10 if w.slide in GROUP_OF[w.encoder] else 120,
    # batch size, workers, device and precision come from --config: changing how features are
    # computed re-runs nothing, changing what they are (weights, precision, dtype) re-runs all
    params:
        staged=lambda w: staged_path(w.encoder, w.slide),
        weights=lambda w: FEATURES["weights"].get(w.encoder, "pretrained"),
        record_failure=(
            "--record-failure" if config["workflow"]["record_failures"] else ""
        ),
        config=EFFECTIVE_CONFIG,
        settings=extract_settings,
    shell:
        "wsi-mil extract {input.slide:q} {input.tiles:q} -o {output:q}"
        " --staged {params.staged:q} --encoder {wildcards.encoder:q}"
        " --weights {params.weights:q} {params.record_failure} --config {params.config:q}"
        " > {log:q} 2>&1"
