"""The report's link to the slide viewer: one line per task, to its cohort index (pages by `wsi-mil viewer`)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from pipeline.report.html import esc


def section(results: str | os.PathLike, folders: list[str] | None, out: str | os.PathLike) -> str:
    """HTML linking each task's ``viewer/{task}/index.html`` ('' when the run has no viewer)."""
    items = []
    for folder in folders or []:
        index = Path(results) / folder / "index.html"
        if not index.is_file():
            continue
        href = quote(Path(os.path.relpath(index, Path(out).parent)).as_posix())
        n = sum(1 for p in index.parent.glob("*.html") if p.name != "index.html")
        items.append(f'<li><a href="{href}">{esc(Path(folder).name)}</a>: {n} slide pages</li>')
    if not items:
        return ""
    return (
        '<h2>Slide viewer</h2>\n<p class="small">Deep-zoom pages per slide with the tissue, the '
        "patch grid and every method's heatmap as layers (out of fold for the training cohort); the "
        "QuPath GeoJSON of each slide is in <code>geojson/{task}/</code>.</p>\n<ul>"
        + "".join(items)
        + "</ul>"
    )
