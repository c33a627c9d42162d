"""Summarise the folds of one method: mean ± std over folds of the test metrics and efficiency figures.

Classification: AUC (binary; macro one-vs-rest for multi-class), accuracy, balanced accuracy and F1 with
the threshold chosen on each fold's validation part (Youden). Survival: Harrell's C-index. Efficiency:
trainable parameters, train seconds/epoch, peak memory (RSS; GPU when on CUDA), inference slides/s.
Folds trained under `protocol: paper` make the summary `optimistic`, with a note saying why.
"""

from __future__ import annotations

from pathlib import Path

HELP = "mean ± std over fold directories of a method -> SUMMARY.json"


def add_arguments(parser) -> None:
    parser.add_argument(
        "folds", type=Path, nargs="+", help="fold directories written by `wsi-mil train`"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="summary JSON to write")


def run(args) -> int:
    from pipeline.log import get_logger
    from pipeline.mil.evaluate import format_summary, summarize
    from pipeline.store import write_json

    summary = summarize(args.folds)
    write_json(args.output, summary)
    get_logger("evaluate").info("%s -> %s", format_summary(summary), args.output)
    return 0
