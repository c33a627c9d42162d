# Tiling: tissue segmentation and the patch grid of each slide (results/tiles, results/qc).


rule tile:
    input:
        slide=lambda w: SLIDES[w.slide],
    output:
        tiles=directory(OUT.tiles("{slide}")),
        qc=report(
            OUT.qc("{slide}"),
            caption="../report/qc.rst",
            category="Slides",
            subcategory="Tissue QC",
            labels={"slide": "{slide}"},
        ),
    log:
        OUT.log("tile", "{slide}"),
    benchmark:
        OUT.benchmark("tile", "{slide}")
    conda:
        "../../envs/tiling.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        mpp=lambda w: f"--mpp {SLIDE_MPP[w.slide]}" if w.slide in SLIDE_MPP else "",
        record_failure=(
            "--record-failure" if config["workflow"]["record_failures"] else ""
        ),
        config=EFFECTIVE_CONFIG,
        settings=settings_digest("slides", "tiling"),
    shell:
        "wsi-mil tile {input.slide:q} -o {output.tiles:q} --qc {output.qc:q} {params.mpp}"
        " {params.record_failure} --config {params.config:q} > {log:q} 2>&1"
