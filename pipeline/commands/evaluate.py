"""Summarise the folds of one method: mean ± std over folds of the test metrics and efficiency figures.

Classification: AUC (binary; macro one-vs-rest for multi-class), accuracy, balanced accuracy and F1 with
the threshold chosen on each fold's validation part (Youden). Survival: Harrell's C-index. Efficiency:
trainable parameters, train seconds/epoch, peak memory (RSS; GPU when on CUDA), inference slides/s.
Folds trained under `protocol: paper` make the summary `optimistic`, with a note saying why.
The summary also holds the intervals of `pipeline.stats` (`stats`): the mean over folds × repeats with
a t-interval over the repeats' means, and the pooled out-of-fold estimate with a DeLong (binary AUC)
or case-bootstrap interval.

With --external the arguments are the fold models' predictions on an external cohort
(`external/{task}/{encoder}/{method}/[repeat{r}/]fold{k}.csv`, each with the `.json` that
`wsi-mil predict --metrics` wrote beside it): the same statistics over the fold models, pooled on
their ensemble (mean score per slide, majority hard prediction). The all-cases model's file
(`external_all_cases/{task}/{encoder}/{method}/all_cases.csv`, `mil.external_all_cases`) gives the
summary of that one model (cohort `external_all_cases`).
"""

from __future__ import annotations

from pathlib import Path

HELP = "mean ± std and intervals over fold directories of a method -> SUMMARY.json"


def add_arguments(parser) -> None:
    parser.add_argument(
        "folds",
        type=Path,
        nargs="+",
        help="fold directories written by `wsi-mil train` (with --external: prediction CSVs)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="summary JSON to write")
    parser.add_argument(
        "--external",
        action="store_true",
        help="summarise fold models' predictions on an external cohort instead",
    )


def external_files(paths) -> list[tuple[int, int, str, str]]:
    """(repeat, fold, csv, json) of external prediction files named ``[repeat{r}/]fold{k}.csv``
    (``all_cases.csv``: the all-cases model, fold -1)."""
    from pipeline.errors import PipelineError
    from pipeline.layout import ALL_CASES, fold_number, fold_repeat

    files = []
    for path in map(Path, paths):
        fold = -1 if path.stem == ALL_CASES else fold_number(path.stem)
        metrics = path.with_suffix(".json")
        if fold is None or not path.is_file() or not metrics.is_file():
            raise PipelineError(
                path,
                "not an external prediction file fold{k}.csv with its fold{k}.json beside it",
                "Write them with `wsi-mil predict --labels ... --metrics fold{k}.json`.",
            )
        files.append((fold_repeat(path), fold, str(path), str(metrics)))
    if len({f[1] == -1 for f in files}) > 1:
        raise PipelineError(
            files[0][2], "mixes fold models' and the all-cases model's files", "Pass one kind."
        )
    return files


def run(args) -> int:
    from pipeline.log import get_logger
    from pipeline.mil.evaluate import format_summary, summarize
    from pipeline.store import write_json

    if args.external:
        import pandas as pd

        from pipeline.mil.comparison import external_summary

        files = external_files(args.folds)
        survival = "risk" in pd.read_csv(files[0][2], nrows=1).columns
        method = Path(files[0][2]).parent.name
        method = Path(files[0][2]).parents[1].name if method.startswith("repeat") else method
        all_cases = all(f[1] == -1 for f in files)
        summary = external_summary(
            method,
            files,
            "survival" if survival else "classification",
            cohort="external_all_cases" if all_cases else "external",
        )
    else:
        summary = summarize(args.folds)
    write_json(args.output, summary)
    get_logger("evaluate").info("%s -> %s", format_summary(summary), args.output)
    return 0
