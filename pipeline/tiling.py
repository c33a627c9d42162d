"""The patch grid of a slide: which patches lie on tissue, a QC picture, and the tile store.

One global grid in level-0 pixels starts at (0, 0) with step = level-0 patch side minus overlap, so
coordinates of the same slide are comparable across runs and parameter changes. Only patches fully inside
the slide are candidates. A patch is kept when the fraction of its area covered by tissue (minus holes)
is ≥ ``min_tissue``; that fraction is computed for the whole grid at once from an integral image of the
tissue mask, evaluated at the patch edges' exact (fractional) mask coordinates, so a patch cell that is not
a whole number of mask pixels is still measured exactly.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import pipeline
from pipeline.errors import PipelineError
from pipeline.log import get_logger
from pipeline.slides import PatchGeometry, Slide, patch_geometry, read_at_mpp
from pipeline.store import atomic_path, write_store
from pipeline.tissue import Tissue, TissueParams, read_for_segmentation, segment_rgb

#: Longest side of the QC thumbnail in pixels (small slides are shown at most at their own resolution).
QC_MAX_SIDE = 2048
#: A segmentation image at least this long is reused for the QC thumbnail instead of a second read.
QC_MIN_SIDE = 1024
_GREEN, _BLUE, _PATCH, _ARTEFACT = (0, 200, 0), (0, 80, 255), (255, 140, 0), (255, 0, 255)  # RGB


@dataclass
class TilingResult:
    """What tiling found for one slide: kept coordinates and everything needed to explain them."""

    coords: np.ndarray  # int32 [N, 2] level-0 top-left (x, y), row-major order
    geometry: PatchGeometry
    step: int  # grid step in level-0 pixels
    tissue: Tissue
    seg_image: np.ndarray = field(repr=False)  # RGB the mask was computed on
    n_candidates: int = 0  # patches of the grid fully inside the slide
    seconds: dict[str, float] = field(default_factory=dict)


def grid_axes(width: int, height: int, size: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Left edges and top edges (level-0 px) of the global grid's patches that fit inside the slide."""
    xs = np.arange(0, max(0, width - size + 1), step, dtype=np.int64)
    ys = np.arange(0, max(0, height - size + 1), step, dtype=np.int64)
    return xs, ys


def _area_below(integral: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """∫∫ mask over [0, u) × [0, v) for every (v, u) pair of the outer product, u/v in mask pixels.

    The mask is constant per pixel, so its area integral is exactly the bilinear interpolation of the
    integral image between integer corners.
    """
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    iu = np.clip(np.floor(u).astype(np.int64), 0, max(w - 1, 0))
    iv = np.clip(np.floor(v).astype(np.int64), 0, max(h - 1, 0))
    au = np.clip(u - iu, 0.0, 1.0)
    av = np.clip(v - iv, 0.0, 1.0)[:, None]
    # gather the needed rows before widening to float: the integral image itself stays int32
    top = integral[iv].astype(np.float64)
    bottom = integral[np.minimum(iv + 1, h)].astype(np.float64)
    right = np.minimum(iu + 1, w)
    upper = (1 - au) * top[:, iu] + au * top[:, right]
    lower = (1 - au) * bottom[:, iu] + au * bottom[:, right]
    return (1 - av) * upper + av * lower


def tissue_fraction(
    mask: np.ndarray, scale: tuple[float, float], xs: np.ndarray, ys: np.ndarray, size: int
) -> np.ndarray:
    """Fraction [len(ys), len(xs)] of each level-0 patch (side ``size``) covered by ``mask`` (0/1).

    ``scale`` is level-0 pixels per mask pixel along (x, y).
    """
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((len(ys), len(xs)))
    integral = cv2.integral((mask > 0).astype(np.uint8), sdepth=cv2.CV_32S)
    sx, sy = scale
    u0, u1 = xs / sx, (xs + size) / sx
    v0, v1 = ys / sy, (ys + size) / sy
    area = (
        _area_below(integral, v1, u1)
        - _area_below(integral, v0, u1)
        - _area_below(integral, v1, u0)
        + _area_below(integral, v0, u0)
    )
    return np.clip(area / ((size / sx) * (size / sy)), 0.0, 1.0)


def grid_step(geometry: PatchGeometry, overlap: int) -> int:
    """Level-0 grid step for ``overlap`` pixels (at target MPP) shared by neighbouring patches."""
    factor = geometry.level0_patch_size / geometry.patch_size
    step = geometry.level0_patch_size - int(round(overlap * factor))
    if overlap >= geometry.patch_size or step < 1:
        raise PipelineError(
            "config",
            f"tiling.overlap={overlap} is not smaller than tiling.patch_size={geometry.patch_size}",
            "Set an overlap below the patch size (0 for none).",
        )
    return step


def tile_slide(
    slide: Slide, slide_mpp: float, tiling: dict[str, Any], tolerance: float
) -> TilingResult:
    """Segment the slide and keep the grid patches with enough tissue (``tiling`` = config section)."""
    params = TissueParams.from_config(tiling)
    geometry = patch_geometry(
        slide, slide_mpp, tiling["target_mpp"], tiling["patch_size"], tolerance
    )
    step = grid_step(geometry, tiling.get("overlap", 0))
    seconds = {}
    t0 = time.perf_counter()
    seg_image, scale = read_for_segmentation(slide, slide_mpp, params)
    seconds["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tissue = segment_rgb(seg_image, scale, slide_mpp, params)
    seconds["mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    width, height = slide.dimensions
    size = geometry.level0_patch_size
    xs, ys = grid_axes(width, height, size, step)
    fraction = tissue_fraction(tissue.mask, tissue.scale, xs, ys, size)
    rows, cols = np.nonzero(fraction >= tiling["min_tissue"])
    coords = np.stack([xs[cols], ys[rows]], axis=1).astype(np.int32).reshape(-1, 2)
    seconds["grid"] = time.perf_counter() - t0
    return TilingResult(coords, geometry, step, tissue, seg_image, len(xs) * len(ys), seconds)


def tile_attrs(
    slide: Slide, mpp_source: str, result: TilingResult, tiling: dict[str, Any]
) -> dict[str, Any]:
    """Provenance of a tile store (data contract: docs/architecture.md §2)."""
    tissue = result.tissue
    return {
        **slide_attrs(slide.path),
        "slide_size": list(slide.dimensions),
        "reader": slide.reader,
        **result.geometry.as_attrs(),
        "mpp_source": mpp_source,
        "step": result.step,
        "overlap": tiling.get("overlap", 0),
        "min_tissue": tiling["min_tissue"],
        "segmentation": {
            **TissueParams.from_config(tiling).as_attrs(),
            "mask_mpp": list(tissue.mask_mpp),
            "mask_size": [int(tissue.mask.shape[1]), int(tissue.mask.shape[0])],
            "threshold": tissue.threshold,
            "tissue_pieces": len(tissue.pieces),
            "holes": sum(len(h) for h in tissue.holes),
        },
        "tissue_area_mm2": round(tissue.area_mm2, 6),
        "artefact_area_mm2": {k: round(v, 6) for k, v in tissue.artefact_area_mm2.items()},
        "n_candidates": result.n_candidates,
        "n_patches": len(result.coords),
        "failed": False,
        "version": pipeline.__version__,
    }


def slide_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Which file the store describes (path, bytes, mtime), so a changed slide is detectable."""
    p = Path(path)
    out: dict[str, Any] = {"slide": str(p.resolve()) if p.exists() else str(p)}
    with contextlib.suppress(OSError):
        st = p.stat()
        out.update(slide_bytes=st.st_size, slide_mtime=st.st_mtime)
    return out


def qc_image(slide: Slide, result: TilingResult) -> np.ndarray:
    """RGB thumbnail with tissue contours (green), kept holes (blue), kept patches (orange) and the
    areas excluded as artefacts (pen ink, near-black; magenta outline)."""
    tissue = result.tissue
    width, height = slide.dimensions
    mpp = result.geometry.slide_mpp
    qc_mpp = max(mpp, max(width, height) * mpp / QC_MAX_SIDE)
    if max(result.seg_image.shape[:2]) >= QC_MIN_SIDE:  # big slide: the segmentation image will do
        qc_mpp = max(qc_mpp, tissue.mask_mpp[0])
    if qc_mpp < tissue.mask_mpp[0] * 0.99:  # small slide: a sharper read is cheap
        thumb, _ = read_at_mpp(slide, mpp, qc_mpp)
    else:
        w = max(1, int(round(width * mpp / qc_mpp)))
        h = max(1, int(round(height * mpp / qc_mpp)))
        thumb = cv2.resize(result.seg_image, (w, h), interpolation=cv2.INTER_AREA)
    thumb = np.ascontiguousarray(thumb)
    # contours: mask px → thumbnail px
    fx = tissue.scale[0] * thumb.shape[1] / width
    fy = tissue.scale[1] * thumb.shape[0] / height

    def to_thumb(contours: list[np.ndarray]) -> list[np.ndarray]:
        return [np.round((c + 0.5) * (fx, fy) - 0.5).astype(np.int32) for c in contours]

    line = max(1, round(max(thumb.shape[:2]) / 700))
    size = result.geometry.level0_patch_size
    kx, ky = thumb.shape[1] / width, thumb.shape[0] / height
    for x, y in result.coords:
        p0 = (int(x * kx), int(y * ky))
        p1 = (int((x + size) * kx) - 1, int((y + size) * ky) - 1)
        cv2.rectangle(thumb, p0, p1, _PATCH, 1)
    cv2.drawContours(thumb, to_thumb(tissue.pieces), -1, _GREEN, line)
    cv2.drawContours(thumb, to_thumb([h for hs in tissue.holes for h in hs]), -1, _BLUE, line)
    if tissue.excluded is not None and tissue.excluded.any():
        excluded, _ = cv2.findContours(tissue.excluded, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(thumb, to_thumb(list(excluded)), -1, _ARTEFACT, line)
    title = (
        f"{slide.name}  {mpp:.3f} um/px  tissue {tissue.area_mm2:.2f} mm2  "
        f"{len(result.coords)} patches of {size} px (level 0)"
    )
    return _with_caption(thumb, [title, _artefact_caption(tissue)])


def _artefact_caption(tissue: Tissue) -> str:
    """The QC picture's second line: what the artefact rules excluded, by rule."""
    areas = {k: v for k, v in tissue.artefact_area_mm2.items() if k != "total" and v > 0}
    if not areas:
        return "excluded artefacts (magenta): none"
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in areas.items())
    return f"excluded artefacts (magenta), mm2: {parts}"


def error_image(line: str) -> np.ndarray:
    """A QC picture that states why the slide failed (for ``--record-failure``)."""
    lines = textwrap.wrap(line, 90) or ["ERROR"]
    canvas = np.full((40 + 28 * len(lines), 1100, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(
            canvas,
            text,
            (12, 32 + 28 * i),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.6,
            (200, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return canvas


def _with_caption(image: np.ndarray, lines: list[str]) -> np.ndarray:
    scale = 0.5
    bar = np.full((22 * len(lines) + 8, max(image.shape[1], 600), 3), 255, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(
            bar, text, (6, 20 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA
        )
    body = np.full((image.shape[0], bar.shape[1], 3), 255, np.uint8)
    body[:, : image.shape[1]] = image
    return np.vstack([bar, body])


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def publish(
    out: str | os.PathLike,
    coords: np.ndarray,
    attrs: dict[str, Any],
    qc: str | os.PathLike | None = None,
    qc_rgb: np.ndarray | None = None,
) -> None:
    """Write the tile store (and the QC PNG) atomically: both appear, or neither does.

    The PNG is encoded in memory (``cv2.imwrite`` picks the format from the suffix, which a temporary
    name lacks) and published only after the store was.
    """
    coords = np.asarray(coords, dtype=np.int32).reshape(-1, 2)
    with contextlib.ExitStack() as stack:
        if qc is not None:
            tmp = stack.enter_context(atomic_path(qc))
            tmp.write_bytes(encode_png(qc_rgb))
        write_store(out, {"coords": coords}, attrs)


def run_tiling(
    slide: Slide,
    slide_mpp: float,
    mpp_source: str,
    tiling: dict[str, Any],
    tolerance: float,
    out: str | os.PathLike,
    qc: str | os.PathLike | None = None,
) -> TilingResult:
    """Tile one open slide and publish its store (and QC), logging what happens."""
    log = get_logger("tile", slide.name)
    start = time.perf_counter()
    width, height = slide.dimensions
    log.info(
        "%d×%d px, %d level(s), opened with %s; %.4f µm/px (%s)",
        width,
        height,
        slide.level_count,
        slide.reader,
        slide_mpp,
        mpp_source,
    )
    result = tile_slide(slide, slide_mpp, tiling, tolerance)
    g, tissue = result.geometry, result.tissue
    if g.level0_patch_size < g.patch_size:
        log.warning(
            "the slide (%.3f µm/px) is coarser than the target %.3f µm/px: patches are upsampled",
            slide_mpp,
            g.target_mpp,
        )
    log.info(
        "patches of %d px at %.3g µm/px = %d level-0 px, read %d px from level %d; grid step %d",
        g.patch_size,
        g.target_mpp,
        g.level0_patch_size,
        g.read_size,
        g.read_level,
        result.step,
    )
    log.info(
        "tissue: %d piece(s), %d hole(s), %.3f mm² (mask %d×%d at %.2f µm/px, saturation > %g) in %.2f s",
        len(tissue.pieces),
        sum(len(h) for h in tissue.holes),
        tissue.area_mm2,
        tissue.mask.shape[1],
        tissue.mask.shape[0],
        tissue.mask_mpp[0],
        tissue.threshold,
        result.seconds["read"] + result.seconds["mask"],
    )
    if tissue.artefact_area_mm2.get("total", 0.0) > 0:
        log.info(
            "excluded as artefacts: %s",
            ", ".join(f"{k} {v:.3f} mm²" for k, v in tissue.artefact_area_mm2.items()),
        )
    n = len(result.coords)
    if n == 0:
        log.warning(
            "no patch has ≥ %.0f%% tissue (%d candidates): writing an empty tile store; "
            "check the QC image, or lower tiling.min_tissue / tiling.sthresh if tissue was missed",
            100 * tiling["min_tissue"],
            result.n_candidates,
        )
    else:
        log.info(
            "kept %d of %d grid patches (tissue ≥ %.0f%%)",
            n,
            result.n_candidates,
            100 * tiling["min_tissue"],
        )
    t0 = time.perf_counter()
    attrs = tile_attrs(slide, mpp_source, result, tiling)
    qc_rgb = qc_image(slide, result) if qc is not None else None
    publish(out, result.coords, attrs, qc, qc_rgb)
    result.seconds["write"] = time.perf_counter() - t0
    result.seconds["total"] = time.perf_counter() - start
    log.info("wrote %s%s in %.2f s total", out, f" and {qc}" if qc else "", result.seconds["total"])
    return result


def publish_failure(
    slide_path: str | os.PathLike,
    error: PipelineError,
    out: str | os.PathLike,
    qc: str | os.PathLike | None = None,
) -> None:
    """Record a slide that cannot be tiled: an empty store marked ``failed`` and a QC PNG saying why."""
    attrs = {
        **slide_attrs(slide_path),
        "failed": True,
        "error": error.line(),
        "n_patches": 0,
        "version": pipeline.__version__,
    }
    qc_rgb = error_image(error.line()) if qc is not None else None
    publish(out, np.zeros((0, 2), np.int32), attrs, qc, qc_rgb)
