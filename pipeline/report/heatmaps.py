"""The report's heatmaps section: per slide, its QC thumbnail beside each method's heatmap, and the
localisation AUCs when tumour masks were given.

Reads only what the heatmaps stage wrote for this run (the folders listed in ``run.json``; each
folder's ``index.json`` and pictures); draws nothing new but small JPEG thumbnails. Methods are shown
with each baseline followed by the methods built on it (AB-MIL, then MHIM(AB-MIL)). Links to the
full-size heatmaps and galleries are relative and URL-encoded, as the QC links are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from pipeline.layout import HEATMAP_INDEX, LOCALISATION_CSV
from pipeline.log import get_logger
from pipeline.methods import METHODS
from pipeline.report import plots
from pipeline.report.html import data_uri, esc, fmt, table
from pipeline.store import write_text

log = get_logger("report")
THUMB_SIDE = 240


@dataclass
class HeatmapFolder:
    """One heatmaps job's output: ``heatmaps/{task}/{encoder}/{method}/`` and its index."""

    path: Path
    task: str
    encoder: str
    method: str
    index: dict[str, Any] = field(default_factory=dict)

    @property
    def slides(self) -> dict[str, dict]:
        return self.index.get("slides", {})


def read_folders(results: str | os.PathLike, folders: list[str]) -> list[HeatmapFolder]:
    """The run's heatmap folders (relative to ``results``) with their index; a missing or broken
    index is logged and shown as missing, not fatal."""
    found = []
    for rel in folders:
        path = Path(results) / rel
        task, encoder, method = Path(rel).parts[-3:]
        item = HeatmapFolder(path, task, encoder, method)
        try:
            item.index = json.loads((path / HEATMAP_INDEX).read_text())
        except (OSError, ValueError) as err:
            log.warning("heatmaps %s: no readable %s (%s)", path, HEATMAP_INDEX, err)
        found.append(item)
    return found


def method_order(methods: list[str]) -> list[str]:
    """Each baseline followed by the methods whose teacher it is, in the given order otherwise."""
    ordered: list[str] = []
    for m in methods:
        base = METHODS[m].baseline if m in METHODS else None
        if base in methods and base not in ordered:
            ordered.append(base)
        if m not in ordered:
            ordered.append(m)
        ordered += [d for d in methods if d not in ordered and _baseline(d) == m]
    return ordered


def _baseline(method: str) -> str | None:
    return METHODS[method].baseline if method in METHODS else None


def localisation_table(folders: list[HeatmapFolder]) -> pd.DataFrame:
    """Per task, encoder, method and score: slides with a defined AUC, median, min and max."""
    rows = []
    for f in folders:
        for score, s in (f.index.get("localisation") or {}).items():
            rows.append(
                {"task": f.task, "encoder": f.encoder, "method": f.method, "score": score, **s}
            )
    columns = ["task", "encoder", "method", "score", "n_slides", "median", "min", "max"]
    return pd.DataFrame(rows, columns=columns)


def _link(target: Path, out_dir: Path) -> str:
    return esc(quote(Path(os.path.relpath(target, out_dir)).as_posix()))


def _cell(folder: HeatmapFolder, slide: str, out_dir: Path) -> str:
    entry = folder.slides.get(slide)
    if entry is None:
        reason = folder.index.get("failed", {}).get(slide, "no heatmap")
        return f'<span class="small">{esc(reason)}</span>'
    png = folder.path / entry["png"]
    try:
        img = data_uri(plots.thumbnail(png, THUMB_SIDE), "image/jpeg")
    except Exception as err:  # a broken picture is shown as missing, not fatal
        log.warning("heatmap %s unreadable (%s)", png, err)
        return f'<a href="{_link(png, out_dir)}">heatmap</a> (unreadable)'
    alt = f"heatmap {folder.method} {slide}"
    html = f'<a href="{_link(png, out_dir)}"><img class="thumb" alt="{esc(alt)}" src="{img}"></a>'
    links = []
    if entry.get("gallery"):
        links.append(f'<a href="{_link(folder.path / entry["gallery"], out_dir)}">gallery</a>')
    pred = f"pred. {fmt(entry.get('prediction'))}, fold {entry.get('fold')}"
    return f'{html}<div class="small">{pred}{" · " if links else ""}{" ".join(links)}</div>'


def slide_grid(
    folders: list[HeatmapFolder], qc: dict[str, tuple[bytes, str]], out_dir: Path
) -> str:
    """One row per slide: QC thumbnail, label, then each method's heatmap (baseline, its MHIM ...)."""
    by_method = {f.method: f for f in folders}
    methods = method_order(list(by_method))
    slides = sorted(
        {s for f in folders for s in f.slides}
        | {s for f in folders for s in f.index.get("failed", {})}
    )
    rows = []
    for slide in slides:
        label = next((f.slides[slide].get("label") for f in folders if slide in f.slides), None)
        thumb = ""
        if slide in qc:
            data, link = qc[slide]
            img = f'<img class="thumb" alt="QC {esc(slide)}" src="{data_uri(data, "image/jpeg")}">'
            thumb = f'<a href="{esc(link)}">{img}</a>'
        cells = [_cell(by_method[m], slide, out_dir) for m in methods]
        rows.append([thumb, f"{esc(slide)}<div class='small'>{esc(label)}</div>", *cells])
    return table(["QC", "slide", *methods], rows)


def section(
    results: str | os.PathLike,
    folders: list[str] | None,
    out: str | os.PathLike,
    qc: dict[str, tuple[bytes, str]],
) -> str:
    """The section's HTML ('' without heatmaps); writes ``localisation.csv`` beside the page."""
    if not folders:
        return ""
    out = Path(out)
    items = read_folders(results, folders)
    groups_seen = list(dict.fromkeys((i.task, i.encoder) for i in items))
    order = method_order(list(dict.fromkeys(i.method for i in items)))
    items.sort(key=lambda i: (groups_seen.index((i.task, i.encoder)), order.index(i.method)))
    parts = [
        "<h2>Heatmaps</h2>",
        '<p class="small">Each slide scored by the fold model whose test part held it (out of '
        "fold); colours are per-slide percentiles of the drawn score (attention unless configured). "
        "Click a heatmap for the full picture.</p>",
    ]
    loc = localisation_table(items)
    if not loc.empty:
        write_text(out.with_name(LOCALISATION_CSV), loc.to_csv(index=False))
        parts.append(_localisation_html(loc, items, out.parent))
    groups: dict[tuple[str, str], list[HeatmapFolder]] = {}
    for item in items:
        groups.setdefault((item.task, item.encoder), []).append(item)
    for (task, encoder), group in groups.items():
        parts.append(f"<h3>{esc(task)} · {esc(encoder)}</h3>")
        parts.append(slide_grid(group, qc, out.parent))
    return "\n".join(parts)


def _localisation_html(loc: pd.DataFrame, items: list[HeatmapFolder], out_dir: Path) -> str:
    rows = [
        [
            esc(r.task),
            esc(r.encoder),
            esc(r.method),
            esc(r.score),
            esc(r.n_slides),
            fmt(r.median),
            f"{fmt(r.min)} – {fmt(r.max)}",
        ]
        for r in loc.itertuples(index=False)
    ]
    csvs = " ".join(
        f'<a href="{_link(i.path / LOCALISATION_CSV, out_dir)}">{esc(i.method)}</a>'
        for i in items
        if i.index.get("localisation")
    )
    return (
        "<h3>Localisation</h3>"
        '<p class="small">Per-slide ROC AUC of the patch scores against patch truth (tumour fraction '
        "≥ 0.5 of the patch, from the tumour masks) over the positive slides: median and range. "
        f"Per-slide values: {csvs}; this table: <a href='{LOCALISATION_CSV}'>{LOCALISATION_CSV}</a>.</p>"
        + table(
            ["task", "encoder", "method", "score", "slides", "median AUC", "range"],
            rows,
            numeric={4, 5},
        )
    )
