"""Write the HTML summary report of a results folder.

Reads what the stages wrote (summary.csv from `wsi-mil summary`, each model's fold predictions,
tiles/*.zarr attrs, qc/*.png, Snakemake's benchmarks/) and writes one self-contained page with the
metrics per task x encoder x method (mean +- std over folds), ROC or Kaplan-Meier curves per fold,
failed slides with their reason, per-slide QC thumbnails and the run time of each stage. Beside
the page, slides.csv lists every slide's status (ok / no tissue / failed) and why it failed.
"""

from __future__ import annotations

from pathlib import Path

HELP = "write the HTML summary report of a results folder"


def add_arguments(parser) -> None:
    parser.add_argument("results", type=Path, help="results folder of a workflow run")
    parser.add_argument(
        "--summary",
        type=Path,
        help="cohort table from `wsi-mil summary` (default: RESULTS/summary.csv)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="HTML file (default: RESULTS/report/index.html)"
    )


def run(args) -> int:
    from pipeline.errors import PipelineError
    from pipeline.report.build import build_report

    summary = args.summary or args.results / "summary.csv"
    if not summary.is_file():
        raise PipelineError(summary, "summary table not found", "Run `wsi-mil summary` first.")
    build_report(args.results, summary, args.output or args.results / "report" / "index.html")
    return 0
