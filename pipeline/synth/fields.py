"""Smooth fields on the low-resolution mask grid that describe a synthetic slide.

Every field is a float32 array on the grid of ``mask_mpp`` µm cells: tissue (> 0 inside tissue, holes cut
below 0), tumour (>= 0 inside tumour), decoys (>= 0 inside a dark, tumour-like region that is not tumour),
stain drift, and pen-ink densities (0..1 per colour). The ground-truth masks are these fields sampled at
the grid points; the painter interpolates them to level 0.

The default slide draws from one random stream in a fixed order (tissue, tumour, stain, then the
painter's noise and nuclei); optional content (decoys, ink) draws from streams of its own, so switching it
on never changes the pixels of a slide without it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

#: Pen colours a slide can be marked with, as the RGB the ink transmits (multiplied onto the pixels).
INK_RGB = {
    "blue": (45, 70, 190),
    "green": (40, 150, 85),
    "red": (205, 35, 45),
    "black": (30, 30, 34),
}
BORDER_RGB = (12, 12, 14)  # a scanner's dark border / slide-edge shadow
INK_WIDTH_UM = 160.0  # a fine marker tip
INK_GLASS_LENGTH_UM = 1200.0
INK_CROSSING_UM = 360.0  # a crossing stroke reaches about half of this into the tissue
BORDER_FRACTION = 0.03  # width of the dark border band, as a fraction of the slide width


def stream(seed: int, tag: int) -> np.random.Generator:
    """A random stream of its own for optional content (decoys, ink) of the slide with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, tag]))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (irregular outlines, stain drift)."""
    noise = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect"
    )
    return noise / max(float(noise.std()), 1e-6)


def grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return yy, xx


def _blobs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """1-3 rotated ellipses as one field (> 0 inside), the coarse shape of the tissue."""
    h, w = shape
    yy, xx = grid(shape)
    blobs = np.full(shape, -np.inf, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.22, 0.4) * h, rng.uniform(0.18, 0.35) * w
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        blobs = np.maximum(blobs, 1.0 - np.sqrt(u * u + v * v))
    return blobs


def _cut_holes(rng: np.random.Generator, fld: np.ndarray, mask_mpp: float) -> None:
    """Lumens / fat, white inside tissue, 40-160 µm across, ~2 per mm² of tissue (at least 3)."""
    h, w = fld.shape
    yy, xx = grid(fld.shape)
    inside = np.argwhere(fld > 0.05)
    area_mm2 = len(inside) * (mask_mpp / 1000.0) ** 2
    n_holes = int(rng.integers(3, 9) * max(1.0, area_mm2 / 3.0)) if len(inside) else 0
    for _ in range(n_holes):
        cy, cx = inside[rng.integers(len(inside))]
        r = rng.uniform(20.0, 80.0) / mask_mpp
        stretch = rng.uniform(0.6, 1.4)
        reach = int(math.ceil(4 * r * max(1.0, stretch)))
        y0, y1 = max(0, cy - reach), min(h, cy + reach + 1)
        x0, x1 = max(0, cx - reach), min(w, cx + reach + 1)
        d2 = ((yy[y0:y1, x0:x1] - cy) / r) ** 2 + ((xx[y0:y1, x0:x1] - cx) / (r * stretch)) ** 2
        fld[y0:y1, x0:x1] -= 2.0 * np.exp(-d2)


def tissue_field(rng: np.random.Generator, shape: tuple[int, int], mask_mpp: float) -> np.ndarray:
    """Irregular blobs covering ~35-60 % of the slide, with holes; > 0 means tissue."""
    h, w = shape
    yy, xx = grid(shape)
    blobs = _blobs(rng, shape)
    # outline wiggles: coarse ones scale with the slide, fine ones (~60 µm) are damped on big slides
    # so a large resection stays in one piece instead of breaking into crumbs
    coarse = max(2.0, 0.06 * min(h, w))
    fine_amp = 0.08 * min(1.0, 100.0 / min(h, w))
    fld = (
        blobs
        + 0.18 * smooth_noise(rng, shape, coarse)
        + fine_amp * smooth_noise(rng, shape, max(1.5, 60.0 / mask_mpp))
    )
    edge = np.minimum(np.minimum(yy, h - 1 - yy) / h, np.minimum(xx, w - 1 - xx) / w)
    fld -= np.clip(0.04 - edge, 0, None) * 20.0  # keep tissue off the slide border
    target = rng.uniform(0.35, 0.6)
    fld -= np.quantile(fld, 1.0 - target)
    _cut_holes(rng, fld, mask_mpp)
    return fld.astype(np.float32)


def tumor_field(
    rng: np.random.Generator, tissue_field: np.ndarray, fraction: float, mask_mpp: float
) -> np.ndarray:
    """Compact regions covering ``fraction`` of the tissue cells; >= 0 means tumour."""
    tissue = tissue_field > 0
    n_tissue = int(tissue.sum())
    k = round(fraction * n_tissue)
    if fraction <= 0 or n_tissue == 0:
        return np.full(tissue_field.shape, -1.0, np.float32)
    k = max(1, min(k, n_tissue))
    yy, xx = grid(tissue_field.shape)
    core = np.argwhere(tissue_field > np.quantile(tissue_field[tissue], 0.3))
    radius = math.sqrt(k / math.pi)
    bumps = np.zeros(tissue_field.shape, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = core[rng.integers(len(core))]
        s = radius * rng.uniform(0.6, 1.2)
        bumps = np.maximum(bumps, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)))
    score = bumps + 0.08 * smooth_noise(rng, tissue_field.shape, max(1.5, radius / 4))
    score += rng.uniform(0, 1e-6, score.shape).astype(np.float32)  # break ties: exactly k cells
    order = np.sort(score[tissue])[::-1]
    threshold = order[k - 1]
    out = score - threshold
    out[~tissue] = -1.0
    return out.astype(np.float32)


def decoy_field(
    rng: np.random.Generator,
    tissue_field: np.ndarray,
    tumor_field_: np.ndarray,
    fraction: float,
    mask_mpp: float,
) -> np.ndarray:
    """Compact regions on ``fraction`` of the tissue, kept ≥ 50 µm away from tumour; >= 0 inside.

    Drawn like tumour (same shapes, same sizes) so that only their texture tells them apart.
    """
    gap = max(1, round(50.0 / mask_mpp))
    near_tumor = ndimage.binary_dilation(tumor_field_ >= 0, iterations=gap)
    allowed = np.where(near_tumor, -1.0, tissue_field).astype(np.float32)
    n_tissue = int((tissue_field > 0).sum())
    n_allowed = int((allowed > 0).sum())
    share = fraction * n_tissue / n_allowed if n_allowed else 0.0
    return tumor_field(rng, allowed, min(share, 0.95), mask_mpp)


def _stroke(shape: tuple[int, int], p0, p1, width: float) -> np.ndarray:
    """Density 0..1 of a straight stroke from p0 to p1 ((x, y) in cells), soft by one cell."""
    canvas = np.zeros(shape, np.uint8)
    pts = [tuple(int(round(v * 16)) for v in p) for p in (p0, p1)]
    cv2.line(canvas, pts[0], pts[1], 255, max(1, round(width)), cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def _glass_stroke(rng, tissue: np.ndarray, cell_um: float) -> np.ndarray:
    """A stroke on the glass only: drawn anywhere, then kept where it is ≥ 100 µm from tissue."""
    h, w = tissue.shape
    length = INK_GLASS_LENGTH_UM / cell_um
    far = ndimage.distance_transform_edt(~tissue) > (INK_WIDTH_UM / 2 + 100.0) / cell_um
    candidates = np.argwhere(far)
    if not len(candidates):
        return np.zeros(tissue.shape, np.float32)
    cy, cx = candidates[rng.integers(len(candidates))]
    angle = rng.uniform(0, np.pi)
    d = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    line = _stroke(
        tissue.shape, (cx - d[0], cy - d[1]), (cx + d[0], cy + d[1]), INK_WIDTH_UM / cell_um
    )
    return line * far


def _crossing_stroke(rng, tissue: np.ndarray, cell_um: float) -> np.ndarray:
    """A stroke from the glass into the tissue, centred on a point of the tissue outline."""
    edge = np.argwhere(tissue & ~ndimage.binary_erosion(tissue))
    if not len(edge):
        return np.zeros(tissue.shape, np.float32)
    cy, cx = edge[rng.integers(len(edge))]
    angle = rng.uniform(0, 2 * np.pi)
    d = 0.5 * INK_CROSSING_UM / cell_um * np.array([np.cos(angle), np.sin(angle)])
    return _stroke(
        tissue.shape, (cx - d[0], cy - d[1]), (cx + d[0], cy + d[1]), INK_WIDTH_UM / cell_um
    )


def ink_fields(
    rng: np.random.Generator,
    tissue_field: np.ndarray,
    colours: tuple[str, ...],
    mask_mpp: float,
    border: bool,
) -> np.ndarray:
    """Ink density [Hm, Wm, C] per colour (``colours`` order, then the border if asked): for each
    colour one stroke on the glass and one across the tissue outline."""
    tissue = tissue_field > 0
    layers = []
    for _ in colours:
        both = _glass_stroke(rng, tissue, mask_mpp) + _crossing_stroke(rng, tissue, mask_mpp)
        layers.append(np.clip(both, 0.0, 1.0))
    if border:
        band = np.zeros(tissue.shape, np.float32)
        band[:, : max(1, round(BORDER_FRACTION * tissue.shape[1]))] = 1.0
        layers.append(band)
    return np.stack(layers, axis=-1).astype(np.float32)
