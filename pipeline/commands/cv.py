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


def _splits(out: Path, task, settings, folds: int, repeat: int | None, log, made: dict):
    """The folds of one repeat: reused from OUTDIR when present (and made from the same inputs and
    settings, else one line), else drawn and written."""
    from pipeline.mil.provenance import check_or_record
    from pipeline.mil.splits import check_inner_folds, make_splits, read_splits, repeat_seed
    from pipeline.store import write_text

    name = "splits.csv" if repeat is None else f"splits.repeat{repeat}.csv"
    path = out / name
    check_or_record(path, {**made, "repeat": repeat}, path.is_file(), out)
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


def _order(settings, method: str, reference: str | None) -> list[str]:
    """Names to train, teachers first: the base method's baseline, the reference, the method."""
    from pipeline.methods import baseline_of

    names = []
    for name in (reference, method):
        if name is None:
            continue
        base, _ = settings.for_method(name)
        names += [baseline_of(base), name]
    return list(dict.fromkeys(n for n in names if n))


def run(args) -> int:
    from pipeline import layout
    from pipeline.commands.train import setup
    from pipeline.log import get_logger
    from pipeline.methods import baseline_of
    from pipeline.mil.all_cases import train_all_cases
    from pipeline.mil.comparison import add_comparisons, summary_fold_dirs
    from pipeline.mil.evaluate import format_summary, summarize, summary_table
    from pipeline.mil.folder import FoldFolder
    from pipeline.mil.provenance import check_or_record, file_digest
    from pipeline.mil.train import prepare_data, train_fold
    from pipeline.store import write_json, write_text

    log = get_logger("cv")
    settings, task = setup(args)
    folds = args.folds or settings.folds
    repeats = layout.repeat_ids(args.repeats or settings.repeats)
    base, _ = settings.for_method(args.method)
    reference = args.reference or settings.reference or baseline_of(base)
    reference = reference if reference != args.method else None
    out = Path(args.output)
    tables = {"labels": file_digest(args.labels), "slides_table": file_digest(args.slides_table)}
    made = {"tables": tables, "task_type": task.type, "folds": folds, "seed": settings.seed}
    made["val_fraction"] = settings.val_fraction  # what each splits file is made from
    splits = {r: _splits(out, task, settings, folds, r, log, made) for r in repeats}
    all_cases = bool(args.external_labels) and (
        args.external_all_cases or settings.external_all_cases
    )
    bags, _, report = prepare_data(task, args.features)
    slides = sorted(s for bag in bags for s in bag.slide_ids)
    names = _order(settings, args.method, reference)
    for name in names:
        name_base, name_settings = settings.for_method(name)
        teacher_name = baseline_of(name_base)
        drop = ("methods", "external_all_cases")  # what is run, not how a fold model is trained
        mil = {k: v for k, v in name_settings.to_dict().items() if k not in drop}
        reused = any(layout.fold_complete(p) for p in (out / name).glob("**/fold*"))
        record = {**made, "repeats": len(repeats), "method": name, "mil": mil, "slides": slides}
        check_or_record(out / name, record, reused, out)  # never reused silently
        fold_dirs = []
        for r in repeats:
            for fold in sorted(splits[r]["fold"].unique()):
                parts = [layout.repeat_name(r)] if r is not None else []
                fold_dir = out.joinpath(name, *parts, layout.fold_name(fold))
                fold_dirs.append(fold_dir)
                if layout.fold_complete(fold_dir):
                    log.info("%s fold %s already complete in %s; kept", name, fold, fold_dir)
                    continue
                teacher = teacher_name and out.joinpath(
                    teacher_name, *parts, layout.fold_name(fold)
                )
                train_fold(
                    *(task, bags, splits[r], fold, name_base, name_settings),
                    outdir=fold_dir,
                    teacher_init=teacher or None,
                    device=args.device,
                    data_report=report,
                    name=name if name != name_base else None,
                )  # fmt: skip
        summary = summarize(fold_dirs, n_boot=args.n_boot)
        write_json(out / name / layout.SUMMARY_JSON, summary)
        log.info("%s", format_summary(summary))
        if args.external_labels:
            _external(args, out, name, fold_dirs, task.type)
        if all_cases:
            model_dir = out / name / layout.ALL_CASES
            if not layout.fold_complete(model_dir):
                train_all_cases(
                    *(task, bags, name_base, name_settings, [FoldFolder(d).metrics() for d in fold_dirs]),
                    outdir=model_dir,
                    teacher_init=teacher_name and out / teacher_name / layout.ALL_CASES or None,
                    device=args.device,
                    name=name if name != name_base else None,
                )  # fmt: skip
            _external(args, out, name, [model_dir], task.type)
    paths = [out / name / layout.SUMMARY_JSON for name in names]
    if args.external_labels:
        paths += [out / "external" / name / layout.SUMMARY_JSON for name in names]
    if all_cases:
        paths += [out / "external_all_cases" / name / layout.SUMMARY_JSON for name in names]
    table = summary_table(paths)
    table.insert(0, "task", Path(args.labels).stem)
    table.insert(1, "encoder", Path(args.features).name)
    summaries = [
        {**s, "fold_dirs": summary_fold_dirs(p, s)}
        for p, s in zip(paths, map(_read_json, paths), strict=True)
    ]
    table = add_comparisons(table, summaries, reference, n_boot=args.n_boot)
    write_text(out / "summary.csv", table.to_csv(index=False))
    row = table[table["method"] == args.method].iloc[0]
    if reference is not None and isinstance(row.get("verdict_cv"), str):
        log.info("%s vs %s: %s", args.method, reference, row["verdict_cv"])
        log.info("%s vs %s (pooled): %s", args.method, reference, row["verdict_pooled"])
    return 0


def _external(args, out: Path, name: str, fold_dirs, task_type: str) -> None:
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
    method_dir = str(out / layout.COHORT_DIRS[cohort] / name)
    for fold_dir in fold_dirs:
        r, k = layout.fold_repeat(fold_dir), layout.fold_number(fold_dir)
        repeat = r if Path(fold_dir).parent.name.startswith("repeat") else None
        if all_cases:
            r, k = 0, -1
            csv_path, json_path = (f"{method_dir}/{layout.ALL_CASES}.{e}" for e in ("csv", "json"))
        else:
            csv_path = layout.external_fold_file(method_dir, k, repeat, "csv")
            json_path = layout.external_fold_file(method_dir, k, repeat, "json")
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
    write_json(Path(method_dir) / layout.SUMMARY_JSON, summary)


def _read_json(path):
    import json

    return json.loads(Path(path).read_text())
