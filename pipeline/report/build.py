"""Assemble the report page of one run: collect its outputs, draw figures, write the HTML."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from urllib.parse import quote

import pandas as pd

import pipeline
from pipeline.layout import Layout
from pipeline.log import get_logger
from pipeline.report import collect, comparisons, heatmaps, html, plots, viewer
from pipeline.store import write_text

log = get_logger("report")


def _figures(results: Path, row: pd.Series) -> list[html.Figure]:
    """KM curves per fold for survival models, ROC curves per fold for binary classifiers."""
    summary_json = Path(
        Layout(str(results)).summary_json(str(row["task"]), str(row["encoder"]), str(row["method"]))
    )
    if not summary_json.is_file():
        log.warning("%s is missing; no curves for %s", summary_json, row["method"])
        return []
    folds = collect.fold_predictions(summary_json)
    if not folds:
        return []
    name = f"{row['encoder']} / {row['method']}"
    if row["task_type"] == "survival":
        png = plots.kaplan_meier(folds, f"{row['task']}: {name}")
        return [
            html.Figure(
                f"Kaplan–Meier, high vs low predicted risk: {name}",
                png,
                "Test cases of each fold split at the median predicted risk of that fold's "
                "training cases; p from the log-rank test; C = Harrell's C-index of the fold.",
            )
        ]
    png = plots.roc_curves(folds, f"{row['task']}: {name}")
    return [html.Figure(f"ROC curves per fold: {name}", png)] if png else []


def slide_table(slides: list[collect.SlideRow]) -> pd.DataFrame:
    """One row per slide: status (ok / no tissue / failed), the reason it failed, patches, MPP."""
    return pd.DataFrame(
        [
            {
                "slide_id": s.slide,
                "status": s.status,
                "error": s.error,
                "n_patches": s.n_patches,
                "tissue_area_mm2": s.tissue_mm2,
                "slide_mpp": s.slide_mpp,
                "mpp_source": s.mpp_source,
                **{f"features_{enc}": shape for enc, shape in s.features.items()},
            }
            for s in slides
        ],
        columns=[
            "slide_id",
            "status",
            "error",
            "n_patches",
            "tissue_area_mm2",
            "slide_mpp",
            "mpp_source",
        ]
        + [f"features_{enc}" for enc in sorted({e for s in slides for e in s.features})],
    )


def build_report(
    results: str | os.PathLike,
    summary_csv: str | os.PathLike,
    out: str | os.PathLike,
    run: collect.RunInputs,
) -> Path:
    """Write the page (and slides.csv beside it) for the slides, encoders and models of ``run``."""
    results, out = Path(results), Path(out)
    models, external = comparisons.split_cohorts(collect.model_results(summary_csv))
    sections = []
    for task, part in models.groupby("task", sort=False):
        part = part.reset_index(drop=True)
        section = html.TaskSection(str(task), str(part["task_type"].iloc[0]), part)
        section.blocks.append(comparisons.section_html(part, external[external["task"] == task]))
        dots = comparisons.fold_dots(results, part)
        section.figures += [dots] if dots else []
        for _, row in part.iterrows():
            section.figures += _figures(results, row)
        sections.append(section)
    slides = collect.slides(results, run)
    thumbs, links = {}, {}
    for s in slides:
        if s.qc_png is not None:
            try:
                thumbs[s.slide] = plots.thumbnail(s.qc_png)
            except Exception as err:  # a broken picture is shown as missing, not fatal
                log.warning("QC picture %s unreadable (%s)", s.qc_png, err)
            # a URL: '#', '?', '&', '%' or spaces in a slide id must not end or change the link
            links[s.slide] = quote(Path(os.path.relpath(s.qc_png, out.parent)).as_posix())
    failed = [s.slide for s in slides if s.failed]
    if failed:
        log.warning("%d failed slide(s) listed in the report: %s", len(failed), ", ".join(failed))
    page = html.page(
        title="wsi-mil report",
        generated=(
            f"wsi-mil {pipeline.__version__}, results in {results.resolve()}, written "
            f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')}"
        ),
        slides=slides,
        sections=sections,
        times=collect.stage_times(results, run.benchmarks),
        thumbs=thumbs,
        qc_links=links,
        config_text=collect.effective_config(results),
        extra=[
            viewer.section(results, run.viewer, out),
            heatmaps.section(
                results, run.heatmaps, out, {s: (thumbs[s], links[s]) for s in thumbs if s in links}
            ),
        ],
    )
    write_text(out.with_name("slides.csv"), slide_table(slides).to_csv(index=False))
    write_text(out, page)
    log.info("report written to %s (%d slides, %d models)", out, len(slides), len(models))
    return out
