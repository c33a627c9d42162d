"""Train one model on ALL the cases of a task, for external validation (`mil.external_all_cases`).

The epoch count is the median (halves rounded up) of the `best_epoch` of the fold folders passed
with --folds (the workflow passes every fold of every repeat of the method); no selection, the same
settings and seed as the fold models (see `pipeline.mil.all_cases`). OUTDIR is written like a fold
folder (model.pt, model.json, history.csv, predictions.csv of the training cases, metrics.json with
`case_ids`, `best_epoch` and `fold_best_epochs`), so `wsi-mil predict --model OUTDIR` applies it.
MHIM methods take the baseline's all-cases folder as --teacher-init.
"""

from __future__ import annotations

from pathlib import Path

HELP = "train one model on all cases for the median best epoch of the CV folds (external cohort)"


def add_arguments(parser) -> None:
    from pipeline.commands.train import add_data_arguments

    add_data_arguments(parser)
    parser.add_argument(
        "--folds",
        type=Path,
        nargs="+",
        required=True,
        help="the method's CV fold folders (their metrics.json give the best epochs)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="model output directory")
    parser.add_argument(
        "--teacher-init",
        type=Path,
        default=None,
        help="the baseline's all-cases folder, whose model.pt initialises the MHIM teacher",
    )


def run(args) -> int:
    from pipeline.commands.train import setup
    from pipeline.mil.all_cases import train_all_cases
    from pipeline.mil.folder import FoldFolder
    from pipeline.mil.train import prepare_data

    settings, task = setup(args)
    base, settings = settings.for_method(args.method)
    bags, _, _ = prepare_data(task, args.features)
    train_all_cases(
        *(task, bags, base, settings, [FoldFolder(d).metrics() for d in args.folds]),
        outdir=args.output,
        teacher_init=args.teacher_init,
        device=args.device,
        name=args.method if base != args.method else None,
    )  # fmt: skip
    return 0
