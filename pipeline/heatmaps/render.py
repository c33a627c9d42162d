"""Heatmap pictures: a slide image with every patch coloured by its score, painted at the output resolution.

Why painted at the output resolution: a 100 000-patch slide is ~80 000 px wide at level 0; the picture is
at most a few thousand, so each patch becomes an integer rectangle of output pixels (an output pixel
belongs to a patch when its centre lies inside the patch) and all rectangles are summed at once through
a 2-D difference array (four corner updates per patch, two cumulative sums). Memory is a few arrays of the
output's size whatever the number of patches. Where patches overlap the pixel gets their mean score;
the colour is blended once with the slide (``alpha``), never stacked.

Normalisation: ``percentile`` (default, as CLAM) maps each score to its rank among the slide's patches
in [0, 1] (top patch -> 1, the top of the colour map); ``raw`` maps [vmin, vmax] (default: the slide's
min and max) linearly. Tissue contours are re-derived on the picture with the tiling's saturation
threshold and area filters (the tile store keeps the settings, not the contours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.errors import PipelineError
from pipeline.heatmaps.store import ScoreStore
from pipeline.settings import HeatmapSettings
from pipeline.slides import Slide, _finest_level_not_coarser, read_at_mpp
from pipeline.tissue import TissueParams, segment_rgb

MAX_SIDE = 2048  # default long side of a whole-slide heatmap
MAX_REGION_SIDE = (
    16384  # largest region picture (a 768 MB uint8 image) before we ask for a coarser MPP
)
_CONTOUR = (0, 160, 0)


@dataclass(frozen=True)
class RenderOptions:
    score: str | None = None  # None: attention if present, else the first score
    normalise: str = "percentile"  # percentile | raw
    vmin: float | None = None  # raw only
    vmax: float | None = None
    alpha: float = 0.5
    cmap: str = "jet"
    max_side: int = MAX_SIDE
    mpp: float | None = None  # output µm/px (default: the long side fits max_side)
    level: int | None = None  # or: the µm/px of this pyramid level
    region: tuple[int, int, int, int] | None = (
        None  # x, y, w, h in level-0 px (default: whole slide)
    )
    contours: bool = True

    @classmethod
    def from_settings(
        cls, settings: HeatmapSettings, score: str | None = None, max_side: int | None = None
    ) -> RenderOptions:
        """The drawing options of the ``heatmaps`` settings; ``score``/``max_side`` (CLI) override."""
        return cls(
            score=score or settings.score,
            normalise=settings.normalise.value,
            alpha=settings.alpha,
            cmap=settings.cmap,
            max_side=max_side or settings.max_side,
        )


@dataclass(frozen=True)
class View:
    """The level-0 rectangle shown and the output size: output px (i, j) is level-0 (x0 + j/kx, y0 + i/ky)."""

    x0: int
    y0: int
    w0: int
    h0: int
    out_w: int
    out_h: int

    @property
    def kx(self) -> float:
        return self.out_w / self.w0

    @property
    def ky(self) -> float:
        return self.out_h / self.h0


@dataclass
class Picture:
    """The rendered PNG content and where the map sits in it (``top``, ``left`` of the map's pixel 0, 0)."""

    rgb: np.ndarray
    view: View
    top: int
    left: int


def normalise(values: np.ndarray, mode: str, vmin=None, vmax=None) -> tuple[np.ndarray, list[str]]:
    """Scores -> [0, 1] and the colour-bar labels (top, middle, bottom)."""
    values = np.asarray(values, dtype=np.float64)
    if mode == "percentile":
        if len(values) < 2:
            return np.ones_like(values), ["top", "", "bottom"]
        q = np.quantile(values, [1.0, 0.5, 0.0])
        labels = [f"100% ({q[0]:.3g})", f"50% ({q[1]:.3g})", f"0% ({q[2]:.3g})"]
        return average_ranks(values) / (len(values) - 1), labels
    if mode == "raw":
        lo = float(values.min()) if vmin is None and len(values) else float(vmin or 0.0)
        hi = float(values.max()) if vmax is None and len(values) else float(vmax or 1.0)
        span = hi - lo if hi > lo else 1.0
        labels = [f"{hi:.3g}", f"{(lo + hi) / 2:.3g}", f"{lo:.3g}"]
        return np.clip((values - lo) / span, 0.0, 1.0), labels
    raise PipelineError("heatmap", f"normalisation must be percentile or raw, got {mode!r}")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks, ties sharing their mean rank (scipy's rankdata 'average' - 1, without importing
    scipy.stats, which costs seconds)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends - 1) / 2.0)[np.cumsum(first) - 1]
    return ranks


def colour_lut(cmap: str) -> np.ndarray:
    """uint8 [256, 3] RGB of a matplotlib colour map (index 255 = the top of the map)."""
    import matplotlib

    try:
        colours = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))
    except KeyError as err:
        raise PipelineError(
            "heatmap", f"unknown colour map {cmap!r}", "e.g. jet, coolwarm, viridis"
        ) from err
    return np.round(colours[:, :3] * 255).astype(np.uint8)


def paint(
    coords: np.ndarray, values: np.ndarray, size0: int, view: View
) -> tuple[np.ndarray, np.ndarray]:
    """Mean value and patch count per output pixel (``[out_h, out_w]`` float64 and int32)."""
    x = coords[:, 0].astype(np.float64) - view.x0
    y = coords[:, 1].astype(np.float64) - view.y0
    j0 = np.clip(np.ceil(x * view.kx - 0.5), 0, view.out_w).astype(np.int64)
    j1 = np.clip(np.ceil((x + size0) * view.kx - 0.5), 0, view.out_w).astype(np.int64)
    i0 = np.clip(np.ceil(y * view.ky - 0.5), 0, view.out_h).astype(np.int64)
    i1 = np.clip(np.ceil((y + size0) * view.ky - 0.5), 0, view.out_h).astype(np.int64)
    keep = (j1 > j0) & (i1 > i0)
    j0, j1, i0, i1, v = j0[keep], j1[keep], i0[keep], i1[keep], np.asarray(values, np.float64)[keep]
    shape = (view.out_h + 1, view.out_w + 1)
    total, count = np.zeros(shape), np.zeros(shape, np.int32)
    for acc, w in ((total, v), (count, np.ones(len(v), np.int32))):
        np.add.at(acc, (i0, j0), w)
        np.add.at(acc, (i0, j1), -w)
        np.add.at(acc, (i1, j0), -w)
        np.add.at(acc, (i1, j1), w)
        np.cumsum(acc, axis=0, out=acc)
        np.cumsum(acc, axis=1, out=acc)
    total, count = total[:-1, :-1], count[:-1, :-1]
    np.divide(total, count, out=total, where=count > 0)
    return total, count


def blend(
    rgb: np.ndarray, mean: np.ndarray, count: np.ndarray, lut: np.ndarray, alpha: float
) -> np.ndarray:
    """``(1 - alpha) * slide + alpha * colour`` on covered pixels, the slide elsewhere (in place).

    Works on whole uint8 images (cv2.addWeighted rounds like ``np.round``), so the temporaries are a
    few bytes per output pixel; ``mean`` is overwritten.
    """
    np.multiply(mean, 255.0, out=mean)
    np.rint(mean, out=mean)
    np.clip(mean, 0, 255, out=mean)
    colour = lut[mean.astype(np.uint8)]
    mixed = cv2.addWeighted(rgb, 1.0 - alpha, colour, alpha, 0.0)
    np.copyto(rgb, mixed, where=(count > 0)[..., None])
    return rgb


def choose_view(slide: Slide, slide_mpp: float, options: RenderOptions) -> tuple[View, float]:
    """The level-0 rectangle, output size and output µm/px the options ask for."""
    width, height = slide.dimensions
    x0, y0, w0, h0 = options.region or (0, 0, width, height)
    if w0 < 1 or h0 < 1 or x0 < 0 or y0 < 0 or x0 + w0 > width or y0 + h0 > height:
        raise PipelineError(
            slide.path,
            f"region {x0},{y0},{w0},{h0} is not inside the {width}x{height} slide",
            "Give --region x,y,w,h in level-0 pixels.",
        )
    if options.level is not None:
        if not 0 <= options.level < slide.level_count:
            raise PipelineError(
                slide.path, f"no level {options.level} ({slide.level_count} levels)"
            )
        out_mpp = slide_mpp * slide.level_downsamples[options.level]
    elif options.mpp is not None:
        out_mpp = float(options.mpp)
    else:
        out_mpp = max(slide_mpp, max(w0, h0) * slide_mpp / options.max_side)
    out_w = max(1, int(round(w0 * slide_mpp / out_mpp)))
    out_h = max(1, int(round(h0 * slide_mpp / out_mpp)))
    if max(out_w, out_h) > MAX_REGION_SIDE:
        raise PipelineError(
            slide.path,
            f"the picture would be {out_w}x{out_h} px at {out_mpp:.3g} um/px",
            f"Ask for a smaller --region or a coarser --mpp (at most {MAX_REGION_SIDE} px a side).",
        )
    return View(x0, y0, w0, h0, out_w, out_h), out_mpp


def read_view(
    slide: Slide, slide_mpp: float, view: View, out_mpp: float, strip_px: int = 2048
) -> np.ndarray:
    """RGB of the view at its output size, read in strips from the finest level not finer than needed."""
    if (view.x0, view.y0, view.w0, view.h0) == (0, 0, *slide.dimensions):
        rgb, _ = read_at_mpp(slide, slide_mpp, out_mpp, strip_px)
        if rgb.shape[:2] == (view.out_h, view.out_w):
            return rgb
        return cv2.resize(rgb, (view.out_w, view.out_h), interpolation=cv2.INTER_AREA)
    level = _finest_level_not_coarser(slide, slide_mpp, out_mpp * 1.001)
    down = slide.level_downsamples[level]
    lw, lh = max(1, math.ceil(view.w0 / down)), max(1, math.ceil(view.h0 / down))
    out = np.empty((view.out_h, view.out_w, 3), np.uint8)
    rows = lh / view.out_h  # level rows per output row
    step = max(1, int(strip_px * strip_px // lw / rows))
    for oy in range(0, view.out_h, step):
        oy1 = min(view.out_h, oy + step)
        ly0, ly1 = int(math.floor(oy * rows)), min(lh, int(math.ceil(oy1 * rows)))
        strip = slide.read_region(
            view.x0, int(round(view.y0 + ly0 * down)), level, (lw, max(1, ly1 - ly0))
        )
        out[oy:oy1] = cv2.resize(strip, (view.out_w, oy1 - oy), interpolation=cv2.INTER_AREA)
    return out


def contour_layer(
    rgb: np.ndarray, view: View, slide_mpp: float, segmentation: dict[str, Any]
) -> np.ndarray | None:
    """Tissue outlines (a 0/1 layer) found on the slide picture BEFORE the scores are blended in,
    with the tiling's threshold, area and artefact filters (the colour map's blues and greens would
    otherwise read as tissue or pen ink)."""
    fields = TissueParams.__dataclass_fields__
    params = {k: segmentation[k] for k in fields if k in segmentation}
    if len(params) != len(fields):
        return None
    params.update(
        use_otsu=False, sthresh=int(round(segmentation.get("threshold", params["sthresh"])))
    )
    tissue = segment_rgb(rgb, (1 / view.kx, 1 / view.ky), slide_mpp, TissueParams(**params))
    line = max(1, round(max(rgb.shape[:2]) / 700))
    layer = np.zeros(rgb.shape[:2], np.uint8)
    cv2.drawContours(layer, tissue.pieces, -1, 1, line)
    cv2.drawContours(layer, [h for hs in tissue.holes for h in hs], -1, 1, line)
    # tissue cut by the picture's edge (a region) is not an outline: leave the border undrawn
    layer[:line], layer[-line:], layer[:, :line], layer[:, -line:] = 0, 0, 0, 0
    return layer


def render_heatmap(
    slide: Slide, store: ScoreStore, options: RenderOptions = RenderOptions()
) -> Picture:
    """The heatmap picture of one slide (caption, map, colour bar) as RGB uint8."""
    tiles = store.tiles
    slide_mpp = float(tiles["slide_mpp"])
    if tiles.get("slide_size") and tuple(tiles["slide_size"]) != tuple(slide.dimensions):
        raise PipelineError(
            slide.path,
            f"slide is {slide.dimensions[0]}x{slide.dimensions[1]} px but the score store was made "
            f"for {tiles['slide_size'][0]}x{tiles['slide_size'][1]}",
            "Render a store with the slide it was scored on.",
        )
    if not 0.0 <= options.alpha <= 1.0:
        raise PipelineError("heatmap", f"alpha must be in [0, 1], got {options.alpha}")
    name, raw = store.score(options.score)
    values, labels = normalise(raw, options.normalise, options.vmin, options.vmax)
    lut = colour_lut(options.cmap)
    view, out_mpp = choose_view(slide, slide_mpp, options)
    rgb = read_view(slide, slide_mpp, view, out_mpp)
    layer = None
    if options.contours and tiles.get("segmentation"):
        layer = contour_layer(rgb, view, slide_mpp, tiles["segmentation"])
    mean, count = paint(store.coords, values, store.patch_size_level0, view)
    blend(rgb, mean, count, lut, options.alpha)
    del mean, count
    if layer is not None:
        rgb[layer > 0] = _CONTOUR
    a = store.attrs
    caption = [
        f"{store.slide_id}  label {a.get('label')}  prediction {_fmt(a.get('prediction'))}  "
        f"method {a.get('method')}",
        f"score {name} ({options.normalise}), {len(raw)} patches, {out_mpp:.3g} um/px"
        + ("" if options.region is None else f", region {','.join(map(str, options.region))}"),
    ]
    return _compose(rgb, view, lut, labels, caption)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _text(img: np.ndarray, text: str, x: int, y: int) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def _compose(
    rgb: np.ndarray, view: View, lut: np.ndarray, labels: list[str], caption: list[str]
) -> Picture:
    """Caption above, colour bar (top of the map at the top) to the right of the map."""
    h, w = rgb.shape[:2]
    bar_h, bar_w, label_w = max(h, 160), 18, 150
    top, left = 22 * len(caption) + 8, 0
    canvas = np.full((top + bar_h, max(w + bar_w + label_w + 16, 640), 3), 255, np.uint8)
    canvas[top : top + h, left : left + w] = rgb
    for i, line in enumerate(caption):
        _text(canvas, line, 6, 20 + 22 * i)
    idx = np.round(np.linspace(255, 0, bar_h)).astype(np.intp)
    bx = w + 8
    canvas[top : top + bar_h, bx : bx + bar_w] = lut[idx][:, None, :]
    for label, frac in zip(labels, (0.0, 0.5, 1.0), strict=True):
        _text(canvas, label, bx + bar_w + 4, top + min(bar_h - 4, max(12, int(frac * bar_h) + 4)))
    return Picture(canvas, view, top, left)


def write_png(path, rgb: np.ndarray) -> None:
    """Publish an RGB picture atomically (encoded in memory: the temporary name has no suffix)."""
    from pipeline.store import atomic_path
    from pipeline.tiling import encode_png

    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_png(rgb))
