# Slide viewer and QuPath export (viewer.enabled, with heatmaps.enabled): per slide a Deep Zoom
# pyramid (viewer_tiles, shared by tasks); per task the GeoJSON of every slide (geojson: tissue
# re-segmented with the tile store's settings, patches with each method's scores, top-k) and the
# viewer pages (viewer: a page per slide with the heatmap layers, and the sortable cohort index).
# Directory outputs, so a failed job leaves none. Paths come from OUT (pipeline/layout.py); the logic
# is `wsi-mil viewer-tiles`, `wsi-mil export-geojson` and `wsi-mil viewer`.


include: "viewer_inputs.smk"


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
