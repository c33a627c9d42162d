"""Gather the outputs of one run for the report: slides, feature stores, model results, run times.

The report shows the run it is given (:class:`RunInputs`: its slide ids, encoders and benchmark
files, from the workflow's ``run.json`` or the command line) and never lists the results folder, so
slides or models left over from an earlier run cannot appear. Paths come from
:class:`pipeline.layout.Layout` (docs/architecture.md, "Data contracts"). Everything is read, nothing
is recomputed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.layout import Layout, fold_file, summary_fold_dirs
from pipeline.log import get_logger
from pipeline.store import read_attrs

log = get_logger("report")


@dataclass(frozen=True)
class RunInputs:
    """What one run is made of: the report shows exactly these slides, encoders and benchmarks."""

    slides: list[str]
    encoders: list[str]
    benchmarks: list[str] | None = None  # None: no run-time table
    heatmaps: list[str] | None = None  # heatmap folders (relative to the results); None: none
    viewer: list[str] | None = None  # the tasks' viewer folders (relative to the results)

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunInputs:
        """The ``run.json`` the workflow writes (``{"slides": [...], "encoders": [...], ...}``)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
            return cls(
                list(data["slides"]),
                list(data["encoders"]),
                data.get("benchmarks"),
                data.get("heatmaps"),
                data.get("viewer"),
            )
        except FileNotFoundError:
            raise PipelineError(
                p,
                "run manifest not found",
                "Run the workflow (it writes it), or pass --slides (and --encoders).",
            ) from None
        except (ValueError, KeyError, TypeError) as err:
            raise PipelineError(p, f"not a run manifest ({err})", "Re-run the workflow.") from None


@dataclass
class SlideRow:
    """What the report shows about one slide (from its tile store's attrs)."""

    slide: str
    failed: bool
    error: str = ""
    n_patches: int = 0
    tissue_mm2: float | None = None
    slide_mpp: float | None = None
    mpp_source: str = ""
    read_level: int | None = None
    qc_png: Path | None = None
    features: dict[str, str] = field(default_factory=dict)  # encoder -> "N × D" or a problem

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        return "no tissue" if self.n_patches == 0 else "ok"


def _feature_shape(store: Path) -> tuple[str, str]:
    """The store's "N × D" (or what is wrong with it) and the error it records, if it failed."""
    try:
        import zarr

        group = zarr.open_group(store=str(store), mode="r")
        attrs = dict(group.attrs)
        if attrs.get("failed"):
            return "failed", str(attrs.get("error") or "")
        shape = group["features"].shape
        return f"{shape[0]} × {shape[1]}", ""
    except Exception as err:  # a damaged store is shown, not fatal for the report
        return f"unreadable ({type(err).__name__})", ""


def slides(results: str | os.PathLike, run: RunInputs) -> list[SlideRow]:
    """One row per slide of the run, with its QC picture and the shape of each encoder's features."""
    out = Layout(str(results))
    rows = []
    for sid in run.slides:
        store = Path(out.tiles(sid))
        try:
            attrs = read_attrs(store)
        except Exception as err:
            rows.append(SlideRow(sid, True, f"tile store unreadable: {err}"))
            continue
        qc = Path(out.qc(sid))
        row = SlideRow(
            slide=sid,
            failed=bool(attrs.get("failed")),
            error=str(attrs.get("error") or ""),
            n_patches=int(attrs.get("n_patches", 0) or 0),
            tissue_mm2=attrs.get("tissue_area_mm2"),
            slide_mpp=attrs.get("slide_mpp"),
            mpp_source=str(attrs.get("mpp_source") or ""),
            read_level=attrs.get("read_level"),
            qc_png=qc if qc.is_file() else None,
        )
        for enc in run.encoders:
            fstore = Path(out.features(enc, sid))
            if not fstore.exists():
                row.features[enc] = "missing"
                continue
            row.features[enc], error = _feature_shape(fstore)
            if error and not row.failed:  # tiled, but its pixels failed to read while extracting
                row.failed, row.error = True, f"feature extraction ({enc}): {error}"
        rows.append(row)
    return rows


def stage_times(results: str | os.PathLike, files: list[str] | None) -> pd.DataFrame:
    """Per stage (rule): jobs, total/mean/max wall seconds and peak RSS from the run's benchmarks.

    ``files`` are the run's benchmark TSVs (``run.json``), relative to ``results`` (as
    ``benchmarks/{stage}/...tsv``) or absolute; missing ones (a job that has not run) are skipped.
    """
    records = []
    for tsv in [Path(results) / f for f in files or []]:
        if not tsv.is_file() or "benchmarks" not in tsv.parts:
            continue
        try:
            df = pd.read_csv(tsv, sep="\t")
        except Exception:  # a benchmark being written while we read: skip it
            continue
        if df.empty or "s" not in df.columns:
            continue
        parts = tsv.parts[len(tsv.parts) - tsv.parts[::-1].index("benchmarks") :]
        stage = parts[0]
        rss = pd.to_numeric(df.get("max_rss", pd.Series([float("nan")])), errors="coerce")
        records.append(
            {
                "stage": stage,
                "job": str(Path(*parts[1:]).with_suffix("")),
                "seconds": float(pd.to_numeric(df["s"], errors="coerce").mean()),
                "max_rss_mb": float(rss.max()),
            }
        )
    jobs = pd.DataFrame(records, columns=["stage", "job", "seconds", "max_rss_mb"])
    if jobs.empty:
        return pd.DataFrame(
            columns=["stage", "jobs", "total_s", "mean_s", "max_s", "slowest", "max_rss_mb"]
        )
    order = {s: i for i, s in enumerate(jobs["stage"].drop_duplicates())}
    grouped = []
    for stage, part in jobs.groupby("stage", sort=False):
        slowest = part.loc[part["seconds"].idxmax()]
        grouped.append(
            {
                "stage": stage,
                "jobs": len(part),
                "total_s": part["seconds"].sum(),
                "mean_s": part["seconds"].mean(),
                "max_s": part["seconds"].max(),
                "slowest": slowest["job"],
                "max_rss_mb": part["max_rss_mb"].max(),
            }
        )
    table = pd.DataFrame(grouped)
    pipeline_order = [
        "tile",
        "extract",
        "splits",
        "train",
        "evaluate",
        "summary",
        "report",
    ]
    rank = {s: i for i, s in enumerate(pipeline_order)}
    table["_rank"] = [rank.get(s, len(rank) + order[s]) for s in table["stage"]]
    return table.sort_values("_rank").drop(columns="_rank").reset_index(drop=True)


def model_results(summary_csv: str | os.PathLike) -> pd.DataFrame:
    """The cohort table written by ``wsi-mil summary`` (one row per task × encoder × method)."""
    return pd.read_csv(summary_csv)


def fold_predictions(summary_json: str | os.PathLike) -> list[tuple[int, pd.DataFrame, dict]]:
    """(fold, predictions.csv, metrics.json) for each fold a method's summary was made from."""
    summary = json.loads(Path(summary_json).read_text())
    out = []
    folds = summary.get("folds", [])
    repeats = summary.get("repeats") or [0] * len(folds)
    fold_dirs = summary_fold_dirs(summary_json, summary)
    for fold, repeat, fdir in zip(folds, repeats, map(Path, fold_dirs), strict=True):
        if repeat > 0:  # repeated CV: curves of the first repeat only
            continue
        pred, metrics = fold_file(fdir, "predictions"), fold_file(fdir, "metrics")
        if not pred.is_file():
            log.warning("%s has no %s; its curves are left out", fdir, pred.name)
            continue
        metrics_data: dict[str, Any] = json.loads(metrics.read_text()) if metrics.is_file() else {}
        out.append((int(fold), pd.read_csv(pred), metrics_data))
    return out


def effective_config(results: str | os.PathLike) -> str:
    """The config the workflow ran with (written by the Snakefile), or '' when absent."""
    path = Path(Layout(str(results)).effective_config)
    return path.read_text() if path.is_file() else ""
