# Feature extraction: one store per slide and encoder (results/features/{encoder}/{slide}.zarr).

FEATURES = config["features"]


rule extract:
    input:
        slide=lambda w: SLIDES[w.slide],
        tiles=OUT.tiles("{slide}"),
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
    # decoding workers plus the model's own thread(s)
    threads: FEATURES["workers"] + 1
    resources:
        gpu=0 if FEATURES["device"] == "cpu" else 1,
        mem_mb=16000,
        runtime=120,
    # batch size, workers, device and precision come from --config: changing how features are
    # computed re-runs nothing, changing what they are (weights, precision, dtype) re-runs all
    params:
        weights=lambda w: FEATURES["weights"].get(w.encoder, "pretrained"),
        record_failure=(
            "--record-failure" if config["workflow"]["record_failures"] else ""
        ),
        config=EFFECTIVE_CONFIG,
        settings=lambda w: settings_digest(
            f"features.weights.{w.encoder}", "features.precision", "features.dtype"
        ),
    shell:
        "wsi-mil extract {input.slide:q} {input.tiles:q} -o {output:q}"
        " --encoder {wildcards.encoder:q} --weights {params.weights:q}"
        " {params.record_failure} --config {params.config:q} > {log:q} 2>&1"
