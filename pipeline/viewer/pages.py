"""The viewer pages of one task: a page per slide and a sortable cohort index, all opening from disk.

``report/viewer/{task}/``::

    index.html                  the cohort: slide, cohort, case, label, fold, each method's prediction
                                and error; sortable; each row links to the slide's page
    {slide}.html  {slide}.js    the page and its data (``window.WSI_MIL_SLIDE``: patches, layers,
                                tissue, top-k), loaded by a <script> tag, never fetched
    thumbs/{slide}/...jpg       the top-k patches of each method, read as the model saw them
    lib/                        OpenSeadragon, viewer.js, viewer.css (``assets``)

The slide's tiles are the pyramid of ``report/viewer/slides/{slide}/`` (``pyramid``), shared by tasks.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2

from pipeline.export.geojson import score_maps
from pipeline.log import get_logger
from pipeline.store import atomic_path
from pipeline.viewer.assets import LIB, copy_assets
from pipeline.viewer.data import (
    Method,
    SlideEntry,
    layers_of,
    prediction_error,
    slide_stores,
    task_of,
)

THUMB_SIDE = 112


@dataclass
class PageJob:
    """Everything one task's pages are made from."""

    task: str
    methods: list[Method]  # heatmap folders: the cv ones, then the external ones
    tiles_dir: Path  # results/tiles
    geojson_dir: Path  # the task's GeoJSON folder (tissue polygons)
    pyramids_dir: Path  # report/viewer/slides
    outdir: Path
    normalise: str = "percentile"
    cmap: str = "jet"
    k: int = 8


def cohort_slides(methods: list[Method]) -> dict[str, str]:
    """slide -> cohort (``cv`` or ``external``), in the order the heatmap indexes list them."""
    out: dict[str, str] = {}
    for method in methods:
        for slide in method.index().get("slides", {}):
            out.setdefault(slide, method.cohort)
    return out


def _thumbs(job: PageJob, tmp: Path, slide: str, tiles_attrs, stores, coords) -> list[dict]:
    """The top-k patches of each method's main score as small JPEGs; their list for the page."""
    from pipeline.heatmaps.gallery import extreme_patches, geometry_of
    from pipeline.slides import open_slide, read_patch

    out = []
    if job.k <= 0 or not stores:
        return out
    folder = tmp / "thumbs" / slide
    folder.mkdir(parents=True, exist_ok=True)
    with open_slide(tiles_attrs["slide"], tiles_attrs.get("reader", "auto")) as handle:
        for n, (method, store) in enumerate(stores):
            name, values = store.score()
            top, _ = extreme_patches(values, job.k)
            geometry = geometry_of(store)
            items = []
            for rank, i in enumerate(top.tolist(), start=1):
                x, y = (int(v) for v in coords[i])
                rgb = read_patch(handle, x, y, geometry)
                small = cv2.resize(rgb, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
                file = folder / f"m{n}_{rank}.jpg"
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
                file.write_bytes(buf.tobytes())
                items.append(
                    {
                        "index": i,
                        "x": x,
                        "y": y,
                        "value": float(values[i]),
                        "thumb": f"thumbs/{quote(slide)}/{file.name}",
                    }
                )
            out.append({"method": method.label, "score": name, "items": items})
    return out


def _tissue(job: PageJob, slide: str) -> list:
    from pipeline.export.geojson import tissue_rings

    path = job.geojson_dir / f"{slide}.geojson"
    if not path.is_file():
        return []
    return tissue_rings(json.loads(path.read_text()))


def slide_page_data(job: PageJob, tmp: Path, slide: str, cohort: str) -> tuple[dict, SlideEntry]:
    """The page data of one slide and its cohort-index row."""
    from pipeline.heatmaps.render import colour_lut
    from pipeline.tilestore import read_tiles

    tiles = read_tiles(job.tiles_dir / f"{slide}.zarr")
    stores = [(m, s) for m, s in slide_stores(job.methods, slide) if m.cohort == cohort]
    score_maps(tiles, [(m.label, s) for m, s in stores])  # refuses other patches' scores
    entry = SlideEntry(slide, cohort)
    info: dict[str, Any] = {}
    layers = []
    for method, store in stores:
        prov = store.attrs.get("provenance") or {}
        entry.case_id = entry.case_id or prov.get("case_id")
        entry.label = entry.label if entry.label is not None else store.attrs.get("label")
        if entry.fold is None:
            entry.fold = prov.get("fold")
        prediction = store.attrs.get("prediction")
        entry.predictions[method.label] = prediction
        entry.errors[method.label] = prediction_error(
            task_of(store.attrs), store.attrs.get("label"), prediction
        )
        layers += layers_of(method.label, store, job.normalise)
        info[method.label] = {"fold": prov.get("fold"), "role": prov.get("role")}
    data = {
        "slide": slide,
        "task": job.task,
        "cohort": cohort,
        "case_id": entry.case_id,
        "label": entry.label,
        "fold": entry.fold,
        "predictions": entry.predictions,
        "errors": entry.errors,
        "models": info,
        "pyramid": os.path.relpath(job.pyramids_dir / slide, job.outdir).replace(os.sep, "/"),
        "patch_size": int(tiles.attrs.get("level0_patch_size", 0)),
        "step": int(tiles.attrs.get("step", tiles.attrs.get("level0_patch_size", 1))),
        "coords": tiles.coords.reshape(-1).tolist(),
        "layers": layers,
        "lut": colour_lut(job.cmap).tolist(),
        "tissue": _tissue(job, slide),
        "topk": _thumbs(job, tmp, slide, tiles.attrs, stores, tiles.coords),
    }
    return data, entry


def _js(name: str, value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return f"window.{name} = " + text.replace("</", "<\\/") + ";\n"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return " / ".join(_fmt(v) for v in value)
    return str(value)


def slide_html(data: dict[str, Any]) -> str:
    """The page of one slide (its data and the pyramid come as scripts beside it)."""
    e = html.escape
    slide = data["slide"]
    rows = [("task", data["task"]), ("cohort", data["cohort"]), ("case", data["case_id"])]
    rows += [("label", data["label"]), ("fold", data["fold"])]
    rows += [(f"prediction {m}", p) for m, p in data["predictions"].items()]
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(_fmt(v))}</td></tr>" for k, v in rows)
    what = "out-of-fold prediction" if data["cohort"] == "cv" else "external prediction"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{e(slide)} · {e(data["task"])}</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="{LIB}/viewer.css">
</head><body>
<header><a href="index.html">&larr; {e(data["task"])} cohort</a><h1>{e(slide)}</h1>
<span class="what">{e(what)}; scroll to zoom, drag to pan, hover a patch for its scores</span></header>
<main><div id="osd"></div>
<aside id="panel"><table class="info">{table}</table>
<section id="layers"></section><section id="topk"></section></aside></main>
<div id="tip" hidden></div>
<script src="{LIB}/openseadragon.min.js"></script>
<script src="{quote(data["pyramid"])}/pyramid.js"></script>
<script src="{quote(slide)}.js"></script>
<script src="{LIB}/viewer.js"></script>
</body></html>
"""


def index_html(task: str, entries: list[SlideEntry], methods: list[str]) -> str:
    """The sortable cohort index (click a column header to sort)."""
    e = html.escape
    head = ["slide", "cohort", "case", "label", "fold"]
    head += [f"{h} {m}" for m in methods for h in ("prediction", "error")]
    body = []
    for s in entries:
        cells = [f'<td><a href="{quote(s.slide_id)}.html">{e(s.slide_id)}</a></td>']
        cells += [f"<td>{e(_fmt(v))}</td>" for v in (s.cohort, s.case_id, s.label, s.fold)]
        for m in methods:
            p, err = s.predictions.get(m), s.errors.get(m)
            sort = "" if not isinstance(p, int | float) else f' data-sort="{p}"'
            cells.append(f"<td{sort}>{e(_fmt(p))}</td>")
            cells.append(f"<td>{e(_fmt(err))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f'<th data-col="{i}">{e(h)}</th>' for i, h in enumerate(head))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(task)} · slide viewer</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="{LIB}/viewer.css"></head><body class="index">
<header><a href="../../index.html">&larr; report</a><h1>{e(task)}: slides</h1>
<span class="what">{len(entries)} slides; predictions are out of fold for the training cohort;
click a column to sort, a slide to open it</span></header>
<table id="cohort"><thead><tr>{header}</tr></thead><tbody>
{"".join(body)}
</tbody></table>
<script src="{LIB}/index.js"></script>
</body></html>
"""


def write_pages(job: PageJob) -> dict[str, Any]:
    """Write the task's viewer folder (atomically) and return its summary."""
    log = get_logger("viewer", job.task)
    slides = cohort_slides(job.methods)
    entries = []
    with atomic_path(job.outdir) as tmp:
        tmp.mkdir(parents=True)
        copy_assets(tmp)
        for slide, cohort in slides.items():
            data, entry = slide_page_data(job, tmp, slide, cohort)
            (tmp / f"{slide}.js").write_text(_js("WSI_MIL_SLIDE", data), encoding="utf-8")
            (tmp / f"{slide}.html").write_text(slide_html(data), encoding="utf-8")
            entries.append(entry)
            log.info("page of %s (%s): %d layers", slide, cohort, len(data["layers"]))
        methods = list(dict.fromkeys(m.label for m in job.methods))
        (tmp / "index.html").write_text(index_html(job.task, entries, methods), encoding="utf-8")
    log.info("wrote %d slide pages in %s", len(entries), job.outdir)
    return {"slides": [e.slide_id for e in entries]}
