"""Train one MIL method on one fold and write its fold directory.

Inputs: a features directory (one store per slide: our `.zarr`, CLAM/TRIDENT `.h5` with features+coords,
or `.pt`), the task table, the splits file (`wsi-mil splits`) and the fold number (0..K-1).

  classification: --labels labels.csv (slide_id,case_id,label); one bag per slide.
  survival:       --labels survival.csv (case_id,time,event) and --slides-table labels.csv (slide_id,case_id);
                  one bag per case (all its slides). Without --slides-table, a slide_id column in the survival
                  table is used, else the feature store names are taken as case ids.
  --slides-table is accepted (and not needed) for classification, so a workflow can always pass it.

Writes into OUTDIR: model.pt (state dict), model.json (what `wsi-mil predict` needs to rebuild the model),
history.csv (per epoch), predictions.csv (every bag of the fold with its role, label or time/event, and
per-class scores or risk), metrics.json (test/val metrics, threshold, efficiency, left-out slides). Each file
is written atomically and metrics.json last: a fold is complete exactly when metrics.json exists.

MHIM methods need the baseline trained on the same fold: pass its OUTDIR with --teacher-init (a missing or
mismatching checkpoint is an error). Settings come from the `mil` section of --config (without it:
the schema defaults that config.yaml documents) and trailing key=value overrides, e.g. `epochs=50 mhim.rhsm_ratio=0.01`.
`protocol=paper` selects on the test fold (as the published code) and marks every output OPTIMISTIC.
"""

from __future__ import annotations

from pathlib import Path

HELP = "train a MIL method on one fold: model.pt, model.json, history.csv, predictions.csv, metrics.json"


def add_task_type_argument(parser) -> None:
    """``--task-type``, shared with `wsi-mil splits` so both infer the task the same way."""
    parser.add_argument(
        "--task-type",
        choices=["classification", "survival"],
        default=None,
        help="default: survival when the table has time and event columns",
    )


def add_data_arguments(parser) -> None:
    """Arguments shared with `wsi-mil cv`."""
    parser.add_argument(
        "--features", type=Path, required=True, help="directory of per-slide feature stores"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="labels.csv (classification) or survival.csv (survival)",
    )
    add_task_type_argument(parser)
    parser.add_argument(
        "--slides-table",
        type=Path,
        default=None,
        help="slide_id,case_id table grouping slides into cases (survival)",
    )
    parser.add_argument("--method", required=True, help="MIL method (see `wsi-mil methods`)")
    parser.add_argument(
        "--config", type=Path, default=None, help="config YAML (its `mil` section is used)"
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto = CUDA when available (default)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override mil config keys, e.g. epochs=50 protocol=paper mhim.rhsm_ratio=0.01",
    )


def add_arguments(parser) -> None:
    add_data_arguments(parser)
    parser.add_argument(
        "--splits", type=Path, required=True, help="splits CSV from `wsi-mil splits`"
    )
    parser.add_argument("--fold", type=int, required=True, help="fold number (0..K-1)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="fold output directory")
    parser.add_argument(
        "--teacher-init",
        type=Path,
        default=None,
        help="baseline fold directory whose model.pt initialises the MHIM teacher",
    )


def setup(args):
    """Typed ``mil`` settings (config + overrides), threads and task shared by train and cv.

    ``--method`` may name a variant of the config (``mil.variants``); the caller asks
    ``settings.for_method`` for its base method and settings.
    """
    import torch

    from pipeline.methods import method_info
    from pipeline.mil.tasks import build_task
    from pipeline.settings import mil_settings

    settings = mil_settings(args.config, args.overrides)
    if args.method not in settings.variants:
        method_info(args.method)  # unknown method: one line before loading anything
    if args.threads:
        torch.set_num_threads(args.threads)
    task = build_task(args.task_type, args.labels, args.slides_table, n_bins=settings.survival_bins)
    return settings, task


def run(args) -> int:
    from pipeline.mil.splits import read_splits
    from pipeline.mil.train import prepare_data, train_fold

    settings, task = setup(args)
    base, settings = settings.for_method(args.method)
    splits = read_splits(args.splits)
    bags, _, report = prepare_data(task, args.features)
    train_fold(
        task,
        bags,
        splits,
        args.fold,
        base,
        settings,
        outdir=args.output,
        teacher_init=args.teacher_init,
        device=args.device,
        data_report=report,
        name=args.method if base != args.method else None,
    )
    return 0
