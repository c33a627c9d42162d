"""Collect the per-method summaries of a workflow run into one cohort table (CSV).

Each SUMMARY.json is `results/mil/{task}/{encoder}/{method}/summary.json` (written by
`wsi-mil evaluate`); the task and encoder are read from that path, so the table has one row per
task x encoder x method (or variant) with each metric's mean and std over folds and the efficiency
figures, the intervals of `pipeline.stats` (CV t-interval over repeats; pooled DeLong / case
bootstrap) and, against the reference method of the same task and encoder (--reference, default the
first baseline listed), the difference in the main metric with its interval, the Nadeau-Bengio
corrected t-test over the repeats x folds, the paired pooled test (DeLong / paired case bootstrap)
and a sentence saying whether the difference is distinguishable from noise.
"""

from __future__ import annotations

from pathlib import Path

HELP = "collect summary.json files into one table (task, encoder, method, metrics)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "summaries", type=Path, nargs="+", help="mil/{task}/{encoder}/{method}/summary.json files"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="CSV to write")
    parser.add_argument(
        "--reference",
        default=None,
        help="method every other method is compared with (default: the first baseline listed)",
    )
    parser.add_argument(
        "--n-boot", type=int, default=2000, help="bootstrap resamples for the paired tests"
    )


def run(args) -> int:

    from pipeline.errors import PipelineError
    from pipeline.layout import summary_parts
    from pipeline.log import get_logger
    from pipeline.mil.comparison import SummaryRecord, add_comparisons
    from pipeline.mil.evaluate import summary_table
    from pipeline.store import write_text

    parts = []
    for path in args.summaries:
        if not path.is_file():
            raise PipelineError(path, "summary not found", "Run `wsi-mil evaluate` for it first.")
        parts.append(summary_parts(path))
        if parts[-1] is None:
            raise PipelineError(
                path,
                "not laid out as mil/{task}/{encoder}/{method}/summary.json",
                "Pass the summaries the workflow wrote.",
            )
    table = summary_table(args.summaries)
    summaries = [SummaryRecord.read(path) for path in args.summaries]
    table.insert(0, "task", [p[0] for p in parts])
    table.insert(1, "encoder", [p[1] for p in parts])
    moved = table.pop("method")
    table.insert(2, "method", moved)
    table = add_comparisons(table, summaries, args.reference, n_boot=args.n_boot)
    write_text(args.output, table.to_csv(index=False))
    get_logger("summary").info("%d rows written to %s", len(table), args.output)
    return 0
