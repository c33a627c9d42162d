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
    parser.add_argument("--done", type=Path, help="write a JSON summary here when all succeeded")


def run(args) -> int:
    from pipeline.config import section
    from pipeline.errors import PipelineError

    jobs = _jobs(args)
    features = section(args.config, "features")
    weights = args.weights or features.get("weights", {}).get(args.encoder, "pretrained")
    from pipeline.features import ExtractOptions

    options = ExtractOptions.from_config(
        features,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        dtype=args.dtype,
    )
    if args.staged is not None:
        if len(jobs) != 1:
            raise PipelineError("--staged", "applies to one slide only", "Pass one SLIDE TILES.")
        if _publish_staged(args.staged, jobs[0], options.requested(args.encoder, weights)):
            return 0
    # SIGTERM (Snakemake or SLURM cancelling the job) is turned into a clean exit by the CLI.
    from pipeline.device import shard_devices
    from pipeline.extract_group import run_sharded

    outcomes = run_sharded(
        jobs,
        args.encoder,
        weights,
        options,
        shard_devices(args.devices or options.device),
        record_failure=args.record_failure,
        raise_errors=len(jobs) == 1,
        skip_done=args.skip_done,
    )
    return _report(outcomes, args.done)


def _jobs(args):
    from pipeline.errors import PipelineError
    from pipeline.extract_group import SlideJob

    pairs, outs = args.inputs, args.output
    if len(pairs) != 2 * len(outs):
        raise PipelineError(
            "extract",
            f"{len(pairs)} paths for {len(outs)} output(s)",
            "Give one SLIDE TILES pair per -o OUTPUT.",
        )
    return [SlideJob(pairs[2 * i], pairs[2 * i + 1], out) for i, out in enumerate(outs)]


def _publish_staged(staged: Path, job, requested) -> bool:
    from pipeline.extract_group import publish_staged
    from pipeline.log import get_logger
    from pipeline.slides import slide_id

    if not publish_staged(staged, job.out, job.tiles, requested):
        return False
    get_logger("extract", slide_id(job.slide)).info("published %s from %s", job.out, staged)
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
