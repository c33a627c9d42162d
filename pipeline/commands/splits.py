"""Make K-fold splits by case, stratified, with a validation part carved from each training part.

The output CSV has one row per (case, fold): case_id, fold (0..K-1), role (train | val | test). Every case
is `test` in exactly one fold; in the other folds it is `train` or `val` (val = the part that selects the
epoch and the decision threshold). Classification tables (slide_id,case_id,label) are stratified by the
case's label (the majority over its slides); survival tables (case_id,time,event) by event x quantile time
bin, the validation part by event. All methods of a task share this file, so they see the same folds.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.train import add_task_type_argument

HELP = "K-fold splits by case (stratified), with validation parts: case_id,fold,role"


def add_arguments(parser) -> None:
    parser.add_argument(
        "table",
        type=Path,
        help="labels.csv (slide_id,case_id,label) or survival.csv (case_id,time,event)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="splits CSV to write")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="fraction of each training part used for validation (default 0.15)",
    )
    add_task_type_argument(parser)
    parser.add_argument(
        "--survival-bins",
        type=int,
        default=4,
        help="time bins used to stratify survival folds (default 4)",
    )


def run(args) -> int:
    from pipeline.errors import PipelineError
    from pipeline.log import get_logger
    from pipeline.mil.splits import make_splits
    from pipeline.mil.tasks import build_task
    from pipeline.store import write_text

    log = get_logger("splits")
    if not 0 < args.val_fraction < 0.5:
        raise PipelineError(
            "--val-fraction", f"{args.val_fraction} is outside (0, 0.5)", "Use e.g. 0.15."
        )
    if args.folds < 2:
        raise PipelineError("--folds", f"{args.folds} folds", "Use 2 or more.")
    task = build_task(args.task_type, args.table, n_bins=args.survival_bins)
    strata, val_strata = task.case_strata()
    splits = make_splits(strata, args.folds, args.seed, args.val_fraction, val_strata)
    write_text(args.output, splits.to_csv(index=False))
    counts = splits.groupby(["fold", "role"]).size().unstack(fill_value=0)
    log.info("%d cases, %d %s folds written to %s", strata.size, args.folds, task.type, args.output)
    for fold, row in counts.iterrows():
        log.info(
            "fold %d: %s", fold, ", ".join(f"{r} {row.get(r, 0)}" for r in ("train", "val", "test"))
        )
    return 0
