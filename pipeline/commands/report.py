"""Write the HTML summary report of one workflow run.

Reads what the stages wrote for the run's slides and models (summary.csv from `wsi-mil summary`,
each model's fold predictions, the slides' tile and feature store attrs, their QC pictures and the
run's Snakemake benchmarks) and writes one self-contained page with the metrics per task x encoder x
method (mean +- std over folds), ROC or Kaplan-Meier curves per fold, failed slides with their
reason, per-slide QC thumbnails and the run time of each stage. Beside the page, slides.csv lists
every slide's status (ok / no tissue / failed) and why it failed.

Which slides and encoders belong to the run comes from the workflow's RESULTS/run.json (or --slides
and --encoders), never from listing the results folder, so outputs of an earlier run with other
slides do not appear.
"""

from __future__ import annotations

from pathlib import Path

HELP = "write the HTML summary report of a workflow run"


def add_arguments(parser) -> None:
    parser.add_argument("results", type=Path, help="results folder of a workflow run")
    parser.add_argument(
        "--summary",
        type=Path,
        help="cohort table from `wsi-mil summary` (default: RESULTS/summary.csv)",
    )
    parser.add_argument(
        "--run",
        type=Path,
        help="the run's manifest of slides, encoders and benchmarks (default: RESULTS/run.json, "
        "written by the workflow); ignored with --slides",
    )
    parser.add_argument("--slides", nargs="+", help="slide ids to report (instead of --run)")
    parser.add_argument(
        "--encoders",
        nargs="*",
        default=None,
        help="with --slides: encoders whose feature stores to show (default: none)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="HTML file (default: RESULTS/report/index.html)"
    )


def run(args) -> int:
    from pipeline.errors import PipelineError
    from pipeline.layout import Layout
    from pipeline.report.build import build_report
    from pipeline.report.collect import RunInputs

    out = Layout(str(args.results))
    summary = args.summary or Path(out.summary_csv)
    if not summary.is_file():
        raise PipelineError(summary, "summary table not found", "Run `wsi-mil summary` first.")
    if args.slides:
        inputs = RunInputs(list(args.slides), list(args.encoders or []))
    else:
        inputs = RunInputs.read(args.run or out.run_manifest)
    build_report(args.results, summary, args.output or Path(out.report_html), inputs)
    return 0
