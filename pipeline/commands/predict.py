"""Score new slides (an external cohort) with a trained fold model.

--model is a fold directory written by `wsi-mil train` (model.pt + model.json, which records the method,
feature dimension, classes and the validation threshold, or the survival bin edges). Output CSV:

  classification: slide_id, case_id, [label,] score_<class>..., prediction (binary: the training threshold)
  survival:       case_id, slide_ids, [time, event, bin,] risk, survival_<k>... (one row per case when
                  --slides-table maps slides to cases, else one per slide)

With --labels (labels.csv / survival.csv of the new cohort) the cohort is scored too and --metrics writes
AUC/accuracy/balanced accuracy/F1 (threshold fixed at training) or the C-index. --instance-scores DIR
writes {slide}.zarr with per-patch scores and coords for heatmaps (attention-based methods).
"""

from __future__ import annotations

from pathlib import Path

HELP = "apply a trained fold model to a features directory -> PRED.csv (+ metrics with --labels)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", type=Path, required=True, help="fold directory from `wsi-mil train`"
    )
    parser.add_argument(
        "--features", type=Path, required=True, help="directory of per-slide feature stores"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="predictions CSV to write")
    parser.add_argument("--labels", type=Path, default=None, help="labels of the cohort (optional)")
    parser.add_argument(
        "--slides-table",
        type=Path,
        default=None,
        help="slide_id,case_id table (survival: one bag per case)",
    )
    parser.add_argument(
        "--metrics", type=Path, default=None, help="metrics JSON to write (needs --labels)"
    )
    parser.add_argument(
        "--instance-scores",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write per-patch scores + coords per slide (zarr) into DIR",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def run(args) -> int:
    from pipeline.errors import PipelineError
    from pipeline.mil.predict import predict, write_instance_scores
    from pipeline.store import write_json, write_text

    if args.metrics and not args.labels:
        raise PipelineError("--metrics", "needs --labels", "Pass the cohort's labels table.")
    result = predict(args.model, args.features, args.labels, args.slides_table, args.device)
    write_text(args.output, result.pop("predictions").to_csv(index=False))
    if args.metrics:
        write_json(args.metrics, result)
    if args.instance_scores:
        write_instance_scores(args.model, args.features, args.instance_scores, args.device)
    return 0
