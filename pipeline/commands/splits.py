"""Make K-fold splits by case, stratified, with a validation part carved from each training part.

The output CSV has one row per (case, fold): case_id, fold (0..K-1), role (train | val | test). Every case
is `test` in exactly one fold; in the other folds it is `train` or `val` (val = the part that selects the
epoch and the decision threshold). Classification tables (slide_id,case_id,label) are stratified by the
case's label (the majority over its slides); survival tables (case_id,time,event) by event x quantile time
bin, the validation part by event. All methods of a task share this file, so they see the same folds.
With --repeat r the folds are those of repeat r of repeated CV (seed + r; ``mil.repeats``).
Folds, seed, validation fraction and survival bins come from the `mil` section of --config (the schema
defaults without it), like every other command; the flags override them. Under an inner selection
(`mil.selection`, default `ensemble_full`) every training part must hold `mil.inner_folds` cases of each class
(survival: events and censored cases): a cohort too small for it is refused here, before any training.
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
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config YAML (its `mil` section gives the defaults)",
    )
    parser.add_argument("--folds", type=int, default=None, help="number of folds (mil.folds)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (mil.seed)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="fraction of each training part used for validation (mil.val_fraction)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="repeat r of repeated CV: folds drawn with seed + r (default: the seed itself)",
    )
    parser.add_argument(
        "--selection",
        default=None,
        help="mil.selection the folds will be trained with: an inner selection (ensemble, inner_cv ...) "
        "needs >= --inner-folds cases of each class in every training part, checked here",
    )
    parser.add_argument(
        "--inner-folds", type=int, default=None, help="mil.inner_folds (inner selection)"
    )
    add_task_type_argument(parser)
    parser.add_argument(
        "--survival-bins",
        type=int,
        default=None,
        help="time bins used to stratify survival folds (mil.survival_bins)",
    )


def run(args) -> int:
    from pipeline.log import get_logger
    from pipeline.mil.splits import check_inner_folds, make_splits, repeat_seed
    from pipeline.mil.tasks import build_task
    from pipeline.settings import mil_settings
    from pipeline.store import write_text

    log = get_logger("splits")
    flags = {
        "folds": args.folds,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "survival_bins": args.survival_bins,
        "selection": args.selection,
        "inner_folds": args.inner_folds,
    }
    # flags override the config; the schema checks them (one line naming a bad value)
    settings = mil_settings(args.config, {k: v for k, v in flags.items() if v is not None})
    task = build_task(args.task_type, args.table, n_bins=settings.survival_bins)
    strata, val_strata = task.case_strata()
    seed = repeat_seed(settings.seed, args.repeat)
    splits = make_splits(strata, settings.folds, seed, settings.val_fraction, val_strata)
    check_inner_folds(splits, val_strata, settings)
    write_text(args.output, splits.to_csv(index=False))
    counts = splits.groupby(["fold", "role"]).size().unstack(fill_value=0)
    log.info(
        "%d cases, %d %s folds written to %s", strata.size, settings.folds, task.type, args.output
    )
    for fold, row in counts.iterrows():
        log.info(
            "fold %d: %s", fold, ", ".join(f"{r} {row.get(r, 0)}" for r in ("train", "val", "test"))
        )
    return 0
