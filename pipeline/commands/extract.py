"""Encode the patches of one slide with a registered encoder into a feature store.

Reads the tile store written by `wsi-mil tile` (coordinates and patch geometry), reads each patch at
the tiling resolution and writes FEATURES.zarr with `features` [N, D] and `coords` [N, 2] in the tile
store's order, plus provenance (encoder, weights and their sha256, normalisation, precision, tile
attrs). An empty or failed tile store gives an empty [0, D] feature store that keeps the reason.
Defaults come from the `features` section of --config; flags override them.
"""

from __future__ import annotations

from pathlib import Path

HELP = "extract patch features of one slide (tile store -> feature store)"


def add_arguments(parser) -> None:
    parser.add_argument("slide", type=Path, help="the slide file the tiles were cut from")
    parser.add_argument("tiles", type=Path, help="its tile store (results/tiles/SLIDE.zarr)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="feature store to write")
    parser.add_argument("--encoder", required=True, help="registry name (see `wsi-mil encoders`)")
    parser.add_argument(
        "--weights",
        help="pretrained (hub or package; default), random (testing only), or a local "
        "file/folder (.safetensors, .bin, .pth)",
    )
    parser.add_argument("--batch-size", type=int, help="patches per forward pass (config: 64)")
    parser.add_argument("--workers", type=int, help="decoding worker processes (config: 4)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="config: auto")
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], help="autocast (config: auto)"
    )
    parser.add_argument(
        "--dtype", choices=["float16", "float32"], help="stored feature dtype (config: float16)"
    )
    parser.add_argument("--config", type=Path, help="config file whose `features` section applies")
    parser.add_argument(
        "--record-failure",
        action="store_true",
        help="when the slide's pixels cannot be read, publish an empty feature store marked failed "
        "(with the error) and exit 0, so one damaged slide does not block the cohort",
    )


def run(args) -> int:
    from pipeline.config import section
    from pipeline.features import ExtractOptions, run_extraction

    features = section(args.config, "features")
    options = ExtractOptions.from_config(
        features,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        dtype=args.dtype,
    )
    weights = args.weights or features.get("weights", {}).get(args.encoder, "pretrained")
    # SIGTERM (Snakemake or SLURM cancelling the job) is turned into a clean exit by the CLI.
    run_extraction(
        args.slide, args.tiles, args.output, args.encoder, weights, options, args.record_failure
    )
    return 0
