"""Cross-validate one method (or variant) in one process: splits, every fold, summary, comparison.

For users without Snakemake. Features are read once for all folds. Writes:

  OUTDIR/splits.csv                       (reused when present, so a re-run keeps the same folds)
  OUTDIR/splits.repeat{r}.csv             (instead, with --repeats R > 1: repeat r drawn with seed + r)
  OUTDIR/{baseline}/[repeat{r}/]fold{k}/  (only for methods with a teacher, e.g. abmil for mhim_abmil)
  OUTDIR/{reference}/[repeat{r}/]fold{k}/ (with --reference)
  OUTDIR/{method}/[repeat{r}/]fold{k}/    (as `wsi-mil train`; a variant of --config under its own name)
  OUTDIR/{name}/summary.json              (as `wsi-mil evaluate`, for each of them)
  OUTDIR/external/{name}/[repeat{r}/]fold{k}.csv|.json
                                          (with --external-features/--external-labels: each fold
                                           model's predictions on the external cohort, as
                                           `wsi-mil predict --labels --metrics` writes them)
  OUTDIR/external/{name}/summary.json     (as `wsi-mil evaluate --external`)
  OUTDIR/{name}/all_cases/                (with --external-all-cases or mil.external_all_cases: one
                                           model trained on every case for the median best epoch of
                                           the folds of every repeat, no selection)
  OUTDIR/external_all_cases/{name}/all_cases.csv|.json|summary.json
                                          (its predictions, metrics and statistics on the cohort)
  OUTDIR/summary.csv                      (as `wsi-mil summary`: intervals, and the comparison of
                                           each with --reference, default the method's baseline;
                                           external rows have cohort = external)

A fold whose metrics.json exists is complete and is not trained again, so an interrupted run resumes.
What splits.csv and each method's folds were made from (table digests, folds, seed, validation
fraction, the mil settings, the slides) is recorded beside them (``*.made-from.json``); a re-run with
anything different stops with one line naming what changed instead of reusing them.
Task inputs and key=value overrides are those of `wsi-mil train`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.train import add_data_arguments

HELP = (
    "cross-validate a method (splits, baseline + MHIM per fold, summary, comparison) in one process"
)


def add_arguments(parser) -> None:
    add_data_arguments(parser)
    parser.add_argument(
        "--folds", type=int, default=None, help="number of folds (default: mil.folds)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeated CV: fold assignments (mil.repeats)"
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="method or variant to compare with (default: mil.reference, else the method's baseline)",
    )
    parser.add_argument(
        "--n-boot", type=int, default=2000, help="bootstrap resamples for intervals and tests"
    )
    parser.add_argument(
        "--external-features", type=Path, default=None, help="features of an external cohort"
    )
    parser.add_argument(
        "--external-labels", type=Path, default=None, help="labels of the external cohort"
    )
    parser.add_argument(
        "--external-slides-table",
        type=Path,
        default=None,
        help="slide_id,case_id of the external cohort (survival)",
    )
    parser.add_argument(
        "--external-all-cases",
        action="store_true",
        help="also train one model on all cases (median best epoch of the folds) for the external "
        "cohort (mil.external_all_cases)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="output directory")


def _splits(cv, task, settings, folds: int, repeat: int | None, log, made: dict):
    """The folds of one repeat: reused from OUTDIR when present (and made from the same inputs and
    settings, else one line), else drawn and written."""
    from pipeline.mil.provenance import check_or_record
    from pipeline.mil.splits import check_inner_folds, make_splits, read_splits, repeat_seed
    from pipeline.store import write_text

    path = cv.splits(repeat)
    check_or_record(path, {**made, "repeat": repeat}, path.is_file(), cv.root)
    if path.is_file():
        splits = read_splits(path)
        log.info("reusing %s (%d folds)", path, splits["fold"].nunique())
        return splits
    strata, val_strata = task.case_strata()
    seed = repeat_seed(settings.seed, repeat)
    splits = make_splits(strata, folds, seed, settings.val_fraction, val_strata)
    check_inner_folds(splits, val_strata, settings)
    write_text(path, splits.to_csv(index=False))
    return splits


def run(args) -> int:
    from pipeline import layout
    from pipeline.commands.train import setup
    from pipeline.log import get_logger
    from pipeline.methods import default_reference, training_order
    from pipeline.mil.provenance import file_digest
    from pipeline.mil.train import prepare_data

    log = get_logger("cv")
    settings, task = setup(args)
    cv = layout.CvLayout(Path(args.output))
    folds = args.folds or settings.folds
    repeats = layout.repeat_ids(args.repeats or settings.repeats)
    reference = args.reference or settings.reference
    reference = reference or default_reference([args.method], settings.variants)
    reference = reference if reference != args.method else None
    tables = {"labels": file_digest(args.labels), "slides_table": file_digest(args.slides_table)}
    made = {"tables": tables, "task_type": task.type, "folds": folds, "seed": settings.seed}
    made["val_fraction"] = settings.val_fraction  # what each splits file is made from
    splits = {r: _splits(cv, task, settings, folds, r, log, made) for r in repeats}
    all_cases = bool(args.external_labels) and (
        args.external_all_cases or settings.external_all_cases
    )
    data = prepare_data(task, args.features)
    names = training_order([args.method], settings.variants, reference)
    for name in names:
        fold_dirs = _cross_validate(args, cv, name, settings, task, data, splits, made, log)
        if args.external_labels:
            _external(args, cv, name, fold_dirs, task.type)
        if all_cases:
            _all_cases(args, cv, name, settings, task, data, fold_dirs)
    _summary_table(args, cv, names, reference, all_cases, log)
    return 0


def _cross_validate(args, cv, name, settings, task, data, splits, made, log) -> list:
    """Every fold of ``name`` over every repeat (complete folds kept), then its ``summary.json``;
    the fold folders, in order."""
    from pipeline import layout
    from pipeline.methods import teacher_of
    from pipeline.mil.evaluate import format_summary, summarize
    from pipeline.mil.provenance import check_or_record
    from pipeline.mil.train import train_fold
    from pipeline.store import write_json

    bags, _, report = data
    name_base, name_settings = settings.for_method(name)
    teacher_name = teacher_of(name, settings.variants)
    drop = ("methods", "external_all_cases")  # what is run, not how a fold model is trained
    mil = {k: v for k, v in name_settings.to_dict().items() if k not in drop}
    slides = sorted(s for bag in bags for s in bag.slide_ids)
    reused = any(layout.fold_complete(p) for p in cv.method_dir(name).glob("**/fold*"))
    record = {**made, "repeats": len(splits), "method": name, "mil": mil, "slides": slides}
    check_or_record(cv.method_dir(name), record, reused, cv.root)  # never reused silently
    fold_dirs = []
    for r, fold_splits in splits.items():
        for fold in sorted(fold_splits["fold"].unique()):
            fold_dir = cv.fold_dir(name, fold, r)
            fold_dirs.append(fold_dir)
            if layout.fold_complete(fold_dir):
                log.info("%s fold %s already complete in %s; kept", name, fold, fold_dir)
                continue
            train_fold(
                *(task, bags, fold_splits, fold, name_base, name_settings),
                outdir=fold_dir,
                teacher_init=teacher_name and cv.fold_dir(teacher_name, fold, r) or None,
                device=args.device,
                data_report=report,
                name=name if name != name_base else None,
            )  # fmt: skip
    summary = summarize(fold_dirs, n_boot=args.n_boot)
    write_json(cv.summary_json(name), summary)
    log.info("%s", format_summary(summary))
    return fold_dirs


def _all_cases(args, cv, name, settings, task, data, fold_dirs) -> None:
    """The all-cases model of ``name`` (unless complete) and its predictions on the external cohort."""
    from pipeline import layout
    from pipeline.methods import teacher_of
    from pipeline.mil.all_cases import train_all_cases
    from pipeline.mil.folder import FoldFolder

    name_base, name_settings = settings.for_method(name)
    teacher_name = teacher_of(name, settings.variants)
    model_dir = cv.all_cases_dir(name)
    if not layout.fold_complete(model_dir):
        train_all_cases(
            *(task, data[0], name_base, name_settings, [FoldFolder(d).metrics() for d in fold_dirs]),
            outdir=model_dir,
            teacher_init=teacher_name and cv.all_cases_dir(teacher_name) or None,
            device=args.device,
            name=name if name != name_base else None,
        )  # fmt: skip
    _external(args, cv, name, [model_dir], task.type)


def _summary_table(args, cv, names, reference, all_cases: bool, log) -> None:
    """``summary.csv``: every summary of this run, with the comparisons against ``reference``."""
    from pipeline.mil.comparison import SummaryRecord, add_comparisons
    from pipeline.mil.evaluate import summary_table
    from pipeline.store import write_text

    cohorts = ["cv"] + ["external"] * bool(args.external_labels)
    cohorts += ["external_all_cases"] * all_cases
    paths = [cv.summary_json(name, cohort) for cohort in cohorts for name in names]
    table = summary_table(paths)
    table.insert(0, "task", Path(args.labels).stem)
    table.insert(1, "encoder", Path(args.features).name)
    summaries = [SummaryRecord.read(p) for p in paths]
    table = add_comparisons(table, summaries, reference, n_boot=args.n_boot)
    write_text(cv.summary_csv, table.to_csv(index=False))
    row = table[table["method"] == args.method].iloc[0]
    if reference is not None and isinstance(row.get("verdict_cv"), str):
        log.info("%s vs %s: %s", args.method, reference, row["verdict_cv"])
        log.info("%s vs %s (pooled): %s", args.method, reference, row["verdict_pooled"])


def _external(args, cv, name: str, fold_dirs, task_type: str) -> None:
    """Every fold model of ``name`` (or its all-cases model: ``fold_dirs`` = ``[.../all_cases]``)
    predicts the external cohort (as `wsi-mil predict`), then its external summary."""
    from pipeline import layout
    from pipeline.errors import PipelineError
    from pipeline.mil.comparison import external_summary
    from pipeline.mil.predict import predict
    from pipeline.store import write_json, write_text

    if args.external_features is None:
        raise PipelineError(
            "--external-labels", "needs --external-features", "Pass both, or neither."
        )
    all_cases = Path(fold_dirs[0]).name == layout.ALL_CASES
    cohort = "external_all_cases" if all_cases else "external"
    files = []
    for fold_dir in fold_dirs:
        r, k = layout.fold_repeat(fold_dir), layout.fold_number(fold_dir)
        repeat = r if Path(fold_dir).parent.name.startswith("repeat") else None
        if all_cases:
            r, k = 0, -1
        csv_path, json_path = cv.external_files(cohort, name, k, repeat)
        result = predict(
            fold_dir,
            args.external_features,
            args.external_labels,
            args.external_slides_table,
            args.device,
        )
        write_text(csv_path, result.pop("predictions").to_csv(index=False))
        result.pop("slide_ids")
        write_json(json_path, result)
        files.append((r, k, csv_path, json_path))
    summary = external_summary(name, files, task_type, n_boot=args.n_boot, cohort=cohort)
    write_json(cv.summary_json(name, cohort), summary)
