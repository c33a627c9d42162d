"""Cross-validate one method in one process: splits, every fold (baseline first when MHIM), summary.

For users without Snakemake. Features are read once for all folds. Writes:

  OUTDIR/splits.csv                       (reused when present, so a re-run keeps the same folds)
  OUTDIR/{baseline}/fold{k}/...           (only for methods with a teacher, e.g. abmil for mhim_abmil)
  OUTDIR/{method}/fold{k}/...             (as `wsi-mil train`)
  OUTDIR/{method}/summary.json            (as `wsi-mil evaluate`; also for the baseline)

A fold whose metrics.json exists is complete and is not trained again, so an interrupted run resumes.
What splits.csv and each method's folds were made from (table digests, folds, seed, validation
fraction, the mil settings, the slides) is recorded beside them (``*.made-from.json``); a re-run with
anything different stops with one line naming what changed instead of reusing them.
Task inputs and key=value overrides are those of `wsi-mil train`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.train import add_data_arguments

HELP = "cross-validate a method (splits, baseline + MHIM per fold, summary) in one process"


def add_arguments(parser) -> None:
    add_data_arguments(parser)
    parser.add_argument(
        "--folds", type=int, default=None, help="number of folds (default: mil.folds)"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="output directory")


def run(args) -> int:
    from pipeline import layout
    from pipeline.commands.train import setup
    from pipeline.log import get_logger
    from pipeline.methods import method_info
    from pipeline.mil.evaluate import format_summary, summarize
    from pipeline.mil.provenance import check_or_record, file_digest
    from pipeline.mil.splits import make_splits, read_splits
    from pipeline.mil.train import prepare_data, train_fold
    from pipeline.store import write_json, write_text

    log = get_logger("cv")
    settings, task = setup(args)
    folds = args.folds or settings.folds
    out = Path(args.output)
    splits_path = out / layout.SPLITS_CSV
    tables = {"labels": file_digest(args.labels), "slides_table": file_digest(args.slides_table)}
    made = {"tables": tables, "task_type": task.type, "folds": folds, "seed": settings.seed}
    made["val_fraction"] = settings.val_fraction  # what splits.csv is made from
    check_or_record(splits_path, made, splits_path.is_file(), out)  # never reused silently
    if splits_path.is_file():
        splits = read_splits(splits_path)
        log.info("reusing %s (%d folds)", splits_path, splits["fold"].nunique())
    else:
        strata, val_strata = task.case_strata()
        splits = make_splits(strata, folds, settings.seed, settings.val_fraction, val_strata)
        write_text(splits_path, splits.to_csv(index=False))
    bags, _, report = prepare_data(task, args.features)
    baseline = method_info(args.method)["baseline"]
    mil = {k: v for k, v in settings.to_dict().items() if k != "methods"}
    slides = sorted(s for bag in bags for s in bag.slide_ids)
    for method in [m for m in (baseline, args.method) if m]:
        reused = any(layout.fold_complete(p) for p in (out / method).glob("fold*"))
        record = {**made, "method": method, "mil": mil, "slides": slides}
        check_or_record(out / method, record, reused, out)
        fold_dirs = []
        for fold in sorted(splits["fold"].unique()):
            fold_dir = out / method / layout.fold_name(fold)
            fold_dirs.append(fold_dir)
            if layout.fold_complete(fold_dir):
                log.info("%s fold %d already complete in %s; kept", method, fold, fold_dir)
                continue
            teacher = (
                out / baseline / layout.fold_name(fold) if method != baseline and baseline else None
            )
            train_fold(
                task,
                bags,
                splits,
                fold,
                method,
                settings,
                outdir=fold_dir,
                teacher_init=teacher,
                device=args.device,
                data_report=report,
            )
        summary = summarize(fold_dirs)
        write_json(out / method / layout.SUMMARY_JSON, summary)
        log.info("%s", format_summary(summary))
    return 0
