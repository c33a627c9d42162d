"""Lay the report out as one self-contained HTML page (figures embedded, no external assets).

One file can be mailed, attached to a lab notebook or opened from a cluster's file browser; the
links to the full-size QC pictures are relative, so they work when the results folder travels along.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipeline.report.collect import SlideRow

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;
max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.failed{color:#b00020}.warn{color:#a15c00}.ok{color:#1b5e20}
.badge{display:inline-block;padding:0 .4em;border-radius:.3em;background:#ffe0b2;font-size:.8em}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:.4em;
padding:.5em 1em}.card b{font-size:1.3em;display:block}
img.thumb{max-width:220px;max-height:160px}img.fig{max-width:100%}
.figs{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;max-width:100%}
figcaption{font-weight:600;font-size:.9em;margin:.3em 0}figure p.small{max-width:40em}
details pre{background:#f8f8f8;padding:.5em;font-size:.8em;overflow:auto}
.small{font-size:.8em;color:#555}
"""

# metric columns of summary.csv, in the order a reader expects, with their display names
METRICS = {
    "auc": "AUC",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced acc.",
    "f1": "F1",
    "c_index": "C-index",
}
EFFICIENCY = {
    "parameters": "parameters",
    "train_seconds_per_epoch": "train s/epoch",
    "peak_rss_mb": "peak RSS MB",
    "peak_gpu_mb": "peak GPU MB",
    "inference_slides_per_second": "inference slides/s",
}


@dataclass
class Figure:
    title: str
    png: bytes
    caption: str = ""


@dataclass
class TaskSection:
    task: str
    task_type: str
    results: pd.DataFrame
    figures: list[Figure] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)  # HTML shown after the results table


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def mean_std(row: pd.Series, metric: str) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if pd.notna(std) else f"{mean:.3f}"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int] = frozenset()
) -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def overview(slides: Sequence[SlideRow], sections: Sequence[TaskSection]) -> str:
    failed = sum(s.failed for s in slides)
    empty = sum(s.status == "no tissue" for s in slides)
    patches = sum(s.n_patches for s in slides)
    models = sum(len(s.results) for s in sections)
    cards = [
        ("slides", len(slides)),
        ("failed", failed),
        ("no tissue", empty),
        ("patches", f"{patches:,}"),
        ("tasks", len(sections)),
        ("models (task × encoder × method)", models),
    ]
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{esc(v)}</b>{esc(k)}</div>' for k, v in cards)
        + "</div>"
    )


def failed_slides(slides: Sequence[SlideRow]) -> str:
    bad = [s for s in slides if s.failed]
    empty = [s for s in slides if s.status == "no tissue"]
    parts = []
    if bad:
        parts.append(
            f'<p class="failed">{len(bad)} slide(s) could not be processed and were left out of '
            "training. Fix the cause, delete their <code>tiles/&lt;slide&gt;.zarr</code> and re-run "
            "to include them.</p>"
        )
        parts.append(table(["slide", "reason"], [[esc(s.slide), esc(s.error)] for s in bad]))
    if empty:
        names = ", ".join(esc(s.slide) for s in empty)
        parts.append(f'<p class="warn">No tissue found (0 patches, no bag): {names}.</p>')
    if not parts:
        parts.append('<p class="ok">Every slide was tiled and embedded.</p>')
    return "".join(parts)


def results_table(results: pd.DataFrame) -> str:
    metrics = [
        m for m in METRICS if f"{m}_mean" in results.columns and results[f"{m}_mean"].notna().any()
    ]
    headers = ["encoder", "method", "folds"] + [METRICS[m] for m in metrics] + ["protocol"]
    rows = []
    for _, r in results.iterrows():
        protocol = esc(r.get("protocol", ""))
        if bool(r.get("optimistic", False)):
            protocol += (
                ' <span class="badge" title="the test fold chose the model">optimistic</span>'
            )
        rows.append(
            [esc(r["encoder"]), esc(r["method"]), esc(r.get("n_folds", ""))]
            + [mean_std(r, m) for m in metrics]
            + [protocol]
        )
    return table(headers, rows, numeric=set(range(2, 3 + len(metrics))))


def efficiency_table(sections: Sequence[TaskSection]) -> str:
    frames = [s.results.assign(task=s.task) for s in sections if len(s.results)]
    if not frames:
        return "<p>No models.</p>"
    df = pd.concat(frames, ignore_index=True)
    cols = [c for c in EFFICIENCY if c in df.columns and df[c].notna().any()]
    if not cols:
        return "<p>The models recorded no efficiency figures.</p>"
    rows = [
        [esc(r["task"]), esc(r["encoder"]), esc(r["method"])]
        + [fmt(r[c], 0 if c in ("parameters", "peak_rss_mb", "peak_gpu_mb") else 2) for c in cols]
        for _, r in df.iterrows()
    ]
    return table(
        ["task", "encoder", "method"] + [EFFICIENCY[c] for c in cols],
        rows,
        numeric=set(range(3, 3 + len(cols))),
    )


def task_section(section: TaskSection) -> str:
    parts = [f"<h3>{esc(section.task)} <span class='small'>({esc(section.task_type)})</span></h3>"]
    if section.results.empty:
        parts.append("<p>No results for this task.</p>")
    else:
        parts.append(results_table(section.results))
    parts += section.blocks
    if section.figures:
        parts.append('<div class="figs">')
        for fig in section.figures:
            parts.append(
                f"<figure><figcaption>{esc(fig.title)}</figcaption>"
                f'<img class="fig" alt="{esc(fig.title)}" src="{data_uri(fig.png, "image/png")}">'
                + (f'<p class="small">{esc(fig.caption)}</p>' if fig.caption else "")
                + "</figure>"
            )
        parts.append("</div>")
    return "".join(parts)


def stage_table(times: pd.DataFrame) -> str:
    if times.empty:
        return "<p>No benchmark files found.</p>"
    rows = [
        [
            esc(r["stage"]),
            esc(r["jobs"]),
            fmt(r["total_s"], 1),
            fmt(r["mean_s"], 1),
            fmt(r["max_s"], 1),
            esc(r["slowest"]),
            fmt(r["max_rss_mb"], 0),
        ]
        for _, r in times.iterrows()
    ]
    total = times["total_s"].sum()
    note = (
        f'<p class="small">Wall seconds summed over jobs ({total:.0f} s in all) from Snakemake\'s '
        "benchmark files; jobs running in parallel overlap in time.</p>"
    )
    return (
        table(
            ["stage", "jobs", "total s", "mean s", "max s", "slowest job", "peak RSS MB"],
            rows,
            numeric={1, 2, 3, 4, 6},
        )
        + note
    )


def slide_table(
    slides: Sequence[SlideRow], thumbs: dict[str, bytes], qc_links: dict[str, str]
) -> str:
    encoders = sorted({e for s in slides for e in s.features})
    headers = ["QC", "slide", "status", "MPP (source)", "read level", "tissue mm²", "patches"]
    headers += [f"features {e}" for e in encoders]
    rows = []
    for s in slides:
        thumb = ""
        if s.slide in thumbs:
            img = f'<img class="thumb" loading="lazy" alt="QC {esc(s.slide)}" src="{data_uri(thumbs[s.slide], "image/jpeg")}">'
            thumb = f'<a href="{esc(qc_links[s.slide])}">{img}</a>' if s.slide in qc_links else img
        css = {"failed": "failed", "no tissue": "warn"}.get(s.status, "ok")
        status = f'<span class="{css}">{esc(s.status)}</span>'
        if s.failed:
            status += f'<div class="small">{esc(s.error)}</div>'
        mpp = (
            f"{s.slide_mpp:.4f} ({esc(s.mpp_source)})"
            if isinstance(s.slide_mpp, int | float)
            else "–"
        )
        rows.append(
            [
                thumb,
                esc(s.slide),
                status,
                mpp,
                fmt(s.read_level),
                fmt(s.tissue_mm2, 2),
                esc(s.n_patches),
            ]
            + [esc(s.features.get(e, "missing")) for e in encoders]
        )
    return table(headers, rows, numeric={4, 5, 6})


def page(
    title: str,
    generated: str,
    slides: Sequence[SlideRow],
    sections: Sequence[TaskSection],
    times: pd.DataFrame,
    thumbs: dict[str, bytes],
    qc_links: dict[str, str],
    config_text: str,
    extra: Sequence[str] = (),
) -> str:
    """The page; ``extra`` holds ready HTML sections (e.g. heatmaps) placed after the slide table."""
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="small">{esc(generated)}</p>',
        overview(slides, sections),
        "<h2>Failed slides</h2>",
        failed_slides(slides),
        "<h2>Results</h2>",
        '<p class="small">Test-fold metrics, mean ± standard deviation over the cross-validation '
        "folds (split by case; every method uses the same folds).</p>",
        *[task_section(s) for s in sections],
        "<h2>Efficiency</h2>",
        efficiency_table(sections),
        "<h2>Run time per stage</h2>",
        stage_table(times),
        "<h2>Slides</h2>",
        slide_table(slides, thumbs, qc_links),
        *extra,
    ]
    if config_text:
        body.append(
            f"<h2>Configuration</h2><details><summary>config.effective.yaml</summary>"
            f"<pre>{esc(config_text)}</pre></details>"
        )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
