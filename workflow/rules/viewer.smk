# Slide viewer and QuPath export (viewer.enabled, with heatmaps.enabled): per slide a Deep Zoom
# pyramid (viewer_tiles, shared by tasks); per task the GeoJSON of every slide (geojson: tissue
# re-segmented with the tile store's settings, patches with each method's scores, top-k) and the
# viewer pages (viewer: a page per slide with the heatmap layers, and the sortable cohort index).
# Directory outputs, so a failed job leaves none. Paths come from OUT (pipeline/layout.py); the logic
# is `wsi-mil viewer-tiles`, `wsi-mil export-geojson` and `wsi-mil viewer`.


def viewer_tasks():
    """The tasks that get viewer pages and GeoJSON (none unless viewer and heatmaps are on)."""
    if not (config["viewer"]["enabled"] and config["heatmaps"]["enabled"]):
        return []
    return list(TASKS)


def check_viewer_library():
    """Stop at the start, not after training, when the pages could not be written."""
    from pipeline.errors import PipelineError
    from pipeline.viewer.assets import openseadragon_dir

    try:
        openseadragon_dir()
    except PipelineError as err:
        raise WorkflowError(err.line())


if viewer_tasks():
    check_viewer_library()


def viewer_slides(task):
    """A task's slides: its training cohort, then its external cohort."""
    return list(dict.fromkeys(TASK_SLIDES[task] + EXTERNAL_SLIDES.get(task, [])))


def viewer_heatmaps(task, external=False):
    """The heatmap folders of every encoder x method of a task (cv, or its external cohort)."""
    if external and task not in EXTERNAL_SLIDES:
        return []
    folder = OUT.external_heatmap_dir if external else OUT.heatmap_dir
    return [folder(task, e, m) for e in ENCODERS for m in TRAINED_METHODS]


def viewer_inputs(w):
    slides = viewer_slides(w.task)
    return {
        "slides": [SLIDES[s] for s in slides],
        "tiles": [OUT.tiles(s) for s in slides],
        "heatmaps": viewer_heatmaps(w.task),
        "external": viewer_heatmaps(w.task, external=True),
    }


def viewer_outputs():
    """The viewer and GeoJSON folders of this run (targets of `all`, inputs of the report)."""
    return [OUT.viewer_dir(t) for t in viewer_tasks()] + [
        OUT.geojson_dir(t) for t in viewer_tasks()
    ]


def viewer_external_flag(w, input):
    if not input.external:
        return ""
    return "--external-heatmaps " + " ".join(shlex.quote(p) for p in input.external)


rule viewer_tiles:
    input:
        slide=lambda w: SLIDES[w.slide],
        tiles=OUT.tiles("{slide}"),
    output:
        directory(OUT.viewer_pyramid("{slide}")),
    log:
        OUT.log("viewer_tiles", "{slide}"),
    benchmark:
        OUT.benchmark("viewer_tiles", "{slide}")
    wildcard_constraints:
        slide=alternatives(SLIDE_IDS),
    conda:
        "../../envs/viewer.yaml"
    threads: config["viewer"]["threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        config=EFFECTIVE_CONFIG,
        settings=settings_digest("viewer", drop=("enabled", "threads")),
    shell:
        "wsi-mil viewer-tiles {input.tiles:q} -o {output:q} --config {params.config:q}"
        " --threads {threads} > {log:q} 2>&1"


rule geojson:
    input:
        unpack(viewer_inputs),
    output:
        directory(OUT.geojson_dir("{task}")),
    log:
        OUT.log("geojson", "{task}"),
    benchmark:
        OUT.benchmark("geojson", "{task}")
    wildcard_constraints:
        task=alternatives(list(TASKS)),
    conda:
        "../../envs/viewer.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        k=config["heatmaps"]["k"],
    shell:
        "wsi-mil export-geojson {input.tiles:q} --heatmaps {input.heatmaps:q} {input.external:q}"
        " -k {params.k} -o {output:q} > {log:q} 2>&1"


rule viewer:
    input:
        unpack(viewer_inputs),
        geojson=OUT.geojson_dir("{task}"),
        pyramids=lambda w: [OUT.viewer_pyramid(s) for s in viewer_slides(w.task)],
    output:
        directory(OUT.viewer_dir("{task}")),
    log:
        OUT.log("viewer", "{task}"),
    benchmark:
        OUT.benchmark("viewer", "{task}")
    wildcard_constraints:
        task=alternatives(list(TASKS)),
    conda:
        "../../envs/viewer.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        external=viewer_external_flag,
        pyramids=OUT.viewer_pyramids_dir,
        tiles=OUT.tiles_dir,
        config=EFFECTIVE_CONFIG,
        settings=settings_digest("heatmaps"),
    shell:
        "wsi-mil viewer --task {wildcards.task:q} --heatmaps {input.heatmaps:q} {params.external}"
        " --tiles-dir {params.tiles:q} --geojson {input.geojson:q} --pyramids {params.pyramids:q}"
        " -o {output:q} --config {params.config:q} > {log:q} 2>&1"
