"""Encode the patches of one slide, or a group of slides, with a registered encoder.

Reads each tile store written by `wsi-mil tile` (coordinates and patch geometry), reads each patch
at the tiling resolution and writes a feature store with `features` [N, D] and `coords` [N, 2] in
the tile store's order, plus provenance (encoder, weights and their sha256, normalisation,
precision, tile attrs, what was requested). An empty or failed tile store gives an empty [0, D]
feature store that keeps the reason.

One slide:   wsi-mil extract SLIDE TILES -o OUT --encoder NAME
A group:     wsi-mil extract S1 T1 S2 T2 ... -o O1 -o O2 ... --encoder NAME [--skip-done]
The group builds the model once; each store is published as soon as it is complete, so a killed
job loses only the slide in progress (`--skip-done` keeps finished stores on the re-run). With
several GPUs visible (`--device cuda`) or a device list (`--devices cuda:0,cuda:1`, `cpu,cpu`), the
slides are sharded over one worker process per device. Defaults come from the `features` section of
--config; flags override them.
"""

from __future__ import annotations

from pathlib import Path

HELP = "extract patch features (tile store -> feature store), one slide or a group"


def add_arguments(parser) -> None:
    parser.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        metavar="SLIDE TILES",
        help="pairs: a slide file and its tile store (results/tiles/SLIDE.zarr), one pair per -o",
    )
    parser.add_argument(
        "-o", "--output", type=Path, action="append", required=True, help="feature store(s)"
    )
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
        "--devices", help="shard the slides over these devices, e.g. cuda:0,cuda:1 (or cpu,cpu)"
    )
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
        help="when a slide's pixels cannot be read, publish an empty feature store marked failed "
        "(with the error), so one damaged slide does not block the cohort",
    )
    parser.add_argument(
        "--skip-done",
        action="store_true",
        help="keep an output that is already a store of the same tiles, encoder, weights, "
        "precision and dtype (the re-run of a killed group job)",
    )
    parser.add_argument(
        "--staged",
        type=Path,
        help="one slide: move this store (left by a group job) to -o when it answers the same "
        "request, instead of embedding",
    )
    parser.add_argument(
        "--done",
        type=Path,
        help="write a JSON summary here when all succeeded (each store records this path)",
    )


def run(args) -> int:
    from pipeline.settings import feature_settings

    jobs = _jobs(args)
    if args.staged is not None and _publish_staged(args, jobs):
        return 0
    features = feature_settings(args.config)
    weights = args.weights or features.weights_for(args.encoder)
    from pipeline.features import ExtractOptions

    options = ExtractOptions.from_config(
        features,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        dtype=args.dtype,
    )
    # SIGTERM (Snakemake or SLURM cancelling the job) is turned into a clean exit by the CLI.
    from pipeline.device import shard_devices
    from pipeline.extract_group import SlideJob, run_sharded

    outcomes = run_sharded(
        [SlideJob(*job) for job in jobs],
        args.encoder,
        weights,
        options,
        shard_devices(args.devices or options.device),
        record_failure=args.record_failure,
        raise_errors=len(jobs) == 1,
        skip_done=args.skip_done,
        group_summary=str(args.done) if args.done is not None else None,
    )
    return _report(outcomes, args.done)


def _jobs(args):
    from pipeline.errors import PipelineError

    pairs, outs = args.inputs, args.output
    if len(pairs) != 2 * len(outs):
        raise PipelineError(
            "extract",
            f"{len(pairs)} paths for {len(outs)} output(s)",
            "Give one SLIDE TILES pair per -o OUTPUT.",
        )
    if args.staged is not None and len(outs) != 1:
        raise PipelineError("--staged", "applies to one slide only", "Pass one SLIDE TILES.")
    return [(pairs[2 * i], pairs[2 * i + 1], out) for i, out in enumerate(outs)]


def _publish_staged(args, jobs) -> bool:
    """The workflow's per-slide step: move the store a group job staged into place. Kept light
    (no numpy, zarr or torch; the config read as the workflow wrote it) as it runs once per slide."""
    import yaml

    from pipeline.staging import publish_staged, request

    features = {}
    if args.config is not None and args.config.exists():
        features = (yaml.safe_load(args.config.read_text()) or {}).get("features") or {}
    weights = args.weights or features.get("weights", {}).get(args.encoder, "pretrained")
    requested = request(
        args.encoder,
        weights,
        args.precision or features.get("precision", "auto"),
        args.dtype or features.get("dtype", "float16"),
    )
    slide, tiles, out = jobs[0]
    if not publish_staged(args.staged, out, tiles, requested):
        return False
    print(f"published {out} from {args.staged}")
    return True


def _report(outcomes, done: Path | None) -> int:
    import sys

    from pipeline.store import write_json

    errors = [o for o in outcomes if o.status == "error"]
    for o in errors:
        print(o.error, file=sys.stderr)
    if errors:
        return 1
    if done is not None:
        summary = {
            str(o.job.out): {"status": o.status, "n_patches": o.result.get("n_patches")}
            for o in outcomes
        }
        write_json(done, summary)
    return 0
