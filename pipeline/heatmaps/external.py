"""Heatmaps of new slides (an external cohort) scored by one trained fold model: `wsi-mil predict
--heatmaps DIR` writes the same store, picture and gallery per slide as the workflow's heatmaps stage
(:mod:`pipeline.heatmaps.oof`), and ``index.json`` last."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.errors import PipelineError
from pipeline.heatmaps.oof import HeatmapJob, score_slide_files
from pipeline.log import get_logger
from pipeline.mil.results import (
    FeatureBank,
    feature_stores,
    load_fold_model,
    model_task,
    slide_bags,
)

log = get_logger("heatmaps")


def external_heatmaps(
    model_dir: str | os.PathLike,
    features_dir: str | os.PathLike,
    job: HeatmapJob,
    labels: dict[str, Any] | None = None,
    slides: list[str] | None = None,
) -> dict[str, Any]:
    """Every slide of ``features_dir`` (or only ``slides``: the cohort that was predicted) scored
    by the model of ``model_dir`` into ``job.outdir``; ``labels`` (slide -> label) only annotates
    the pictures. Returns (and writes last) the index."""
    from pipeline.store import write_json

    index_path = job.outdir / layout.HEATMAP_INDEX
    index_path.unlink(missing_ok=True)
    job.outdir.mkdir(parents=True, exist_ok=True)
    model, meta = load_fold_model(model_dir, job.device)
    task = model_task(meta)
    bank = FeatureBank.load(features_dir)
    stores = feature_stores(features_dir)
    entries, failed = {}, {}
    for bag in slide_bags(bank, slides):
        slide = bag.slide_ids[0]
        provenance = {"fold": meta.fold, "role": "external", "model_dir": str(model_dir)}
        try:
            entry = score_slide_files(task, bag, slide, stores[slide], model, provenance, job, bank)
        except PipelineError as err:
            failed[slide] = err.line()
            log.error("%s", err.line())
            continue
        entry["label"] = (labels or {}).get(slide)
        entries[slide] = entry
    index = {
        "method": meta.method,
        "task_type": task.type,
        "model_dir": str(model_dir),
        "slides": entries,
        "failed": failed,
    }
    write_json(index_path, index)
    log.info("heatmaps of %d slide(s) in %s (%d failed)", len(entries), job.outdir, len(failed))
    return index


def heatmap_job(outdir: Path, method: str, features_dir: Path, device: str, k: int, config=None):
    """A :class:`HeatmapJob` drawn with the config's ``heatmaps`` options (schema defaults without one)."""
    from pipeline.heatmaps.render import RenderOptions
    from pipeline.settings import heatmap_settings

    cfg = heatmap_settings(config)
    options = RenderOptions.from_settings(cfg)
    k = cfg.k if k is None else k
    return HeatmapJob(method, {}, Path(outdir), Path(features_dir), options, k, None, device)
