"""Score new slides (an external cohort) with a trained fold model.

--model is a fold directory written by `wsi-mil train` (model.pt + model.json, which records the method,
feature dimension, classes and the validation threshold, or the survival bin edges). Output CSV:

  classification: slide_id, case_id, [label,] score_<class>..., prediction (binary: the training threshold)
  survival:       case_id, slide_ids, [time, event, bin,] risk, survival_<k>... (one row per case when
                  --slides-table maps slides to cases, else one per slide)

With --labels (labels.csv / survival.csv of the new cohort) the cohort is scored too and --metrics writes
AUC/accuracy/balanced accuracy/F1 (threshold fixed at training) or the C-index. --heatmaps DIR writes,
per slide, the score store {slide}.zarr (coords and every per-patch score of the method), the heatmap
{slide}.png and the gallery {slide}_gallery.png/.csv, as the workflow's heatmaps stage does (drawing
options from the --config `heatmaps` section); the slides' feature stores must come from `wsi-mil
extract` (they record the tile geometry and the slide path).
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
        "--heatmaps",
        "--instance-scores",
        dest="heatmaps",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write per-slide score stores, heatmaps and galleries into DIR",
    )
    parser.add_argument("-k", type=int, default=None, help="gallery patches per row (default 8)")
    parser.add_argument("--config", type=Path, help="config YAML (its `heatmaps` section)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def run(args) -> int:
    from pipeline.errors import PipelineError
    from pipeline.mil.predict import predict
    from pipeline.store import write_json, write_text

    if args.metrics and not args.labels:
        raise PipelineError("--metrics", "needs --labels", "Pass the cohort's labels table.")
    result = predict(args.model, args.features, args.labels, args.slides_table, args.device)
    frame = result.pop("predictions")
    slides = result.pop("slide_ids")
    write_text(args.output, frame.to_csv(index=False))
    if args.metrics:
        write_json(args.metrics, result)
    if args.heatmaps:
        labels = None
        if {"slide_id", "label"} <= set(frame.columns):
            labels = dict(zip(frame["slide_id"], frame["label"], strict=True))
        write_heatmaps(args, result["method"], labels, slides)
    return 0


def write_heatmaps(args, method: str, labels, slides: list[str]) -> None:
    """Score store, heatmap and gallery of every predicted slide into --heatmaps (one store format):
    with --labels only the labelled cohort's slides, not every store of a shared features folder."""
    from pipeline.heatmaps.external import external_heatmaps, heatmap_job

    job = heatmap_job(args.heatmaps, method, args.features, args.device, args.k, args.config)
    external_heatmaps(args.model, args.features, job, labels, slides)
