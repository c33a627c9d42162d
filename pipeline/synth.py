"""Synthetic pyramidal Aperio-style slides with known tissue and tumour, for the demo and the tests.

Why: every stage needs slides whose truth is known (where the tissue is, where the tumour is, which MPP
and magnification the scanner wrote) and that open like real scanner files in openslide and tiffslide.
A slide is described by three smooth fields on a low-resolution grid (``mask_mpp`` µm/px, 8 by default):
tissue (> 0 inside tissue, holes cut below 0), tumour (>= 0 inside tumour) and stain variation. The
ground-truth masks are those fields sampled at the grid points; level 0 is the same fields bilinearly
interpolated, painted with H&E-like colours and nuclei drawn from point lists. So mask pixel ``(i, j)``
covers level-0 pixels ``[j*d, (j+1)*d) × [i*d, (i+1)*d)`` with ``d = mask_mpp / mpp``, exactly.

Level 0 is painted strip by strip and streamed tile by tile into tifffile, and the 4× level below it is
accumulated on the way (in a temporary memory map for big slides), so a 40000×30000 slide is written
without ever holding level 0 in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from pipeline.store import atomic_path

BACKGROUND = np.array([242.0, 240.0, 244.0], np.float32)
STROMA = (np.array([236.0, 168.0, 200.0], np.float32), np.array([214.0, 128.0, 178.0], np.float32))
TUMOR_BG = (np.array([176.0, 110.0, 178.0], np.float32), np.array([150.0, 88.0, 160.0], np.float32))
NORMAL_NUCLEUS = np.array([92.0, 56.0, 140.0], np.float32)
TUMOR_NUCLEUS = np.array([52.0, 22.0, 98.0], np.float32)

NORMAL_NUCLEI_PER_UM2 = 1 / 180.0  # sparse, small nuclei in stroma
TUMOR_NUCLEI_PER_UM2 = 1 / 55.0  # crowded, large nuclei in tumour
STAIN_LEVELS = 32  # stain-drift steps in the colour table
NOISE_LEVELS = 32  # grain-noise steps in the colour table
MAGNIFICATION_MPP = {40: 0.25, 20: 0.5}
APERIO_HEADER = "Aperio Image Library v12.0.0 (wsi-mil synthetic)"
_MEMMAP_BYTES = 64 << 20  # levels below 0 larger than this go to a temporary memory map


@dataclass
class SlideTruth:
    """What was written: geometry, scanner metadata and the low-resolution ground truth.

    ``tissue`` and ``tumor`` are boolean masks at ``mask_mpp`` µm/px; mask pixel ``(i, j)`` covers
    level-0 pixels ``x in [j*mask_downsample, (j+1)*mask_downsample)``, same for ``y`` with ``i``.
    ``tumor_fraction`` is tumour area / tissue area measured on those masks.
    """

    slide_id: str
    path: Path
    width: int
    height: int
    mpp: float
    appmag: int
    mask_mpp: float
    mask_downsample: int
    level_dimensions: list[tuple[int, int]]
    tile_size: int
    seed: int
    tissue: np.ndarray = field(repr=False)
    tumor: np.ndarray = field(repr=False)

    @property
    def tissue_fraction(self) -> float:
        """Tissue area / slide area (mask scale)."""
        return float(self.tissue.mean())

    @property
    def tumor_fraction(self) -> float:
        """Tumour area / tissue area (mask scale); 0 for a negative slide."""
        n = int(self.tissue.sum())
        return float(self.tumor.sum()) / n if n else 0.0

    @property
    def tissue_area_mm2(self) -> float:
        return float(self.tissue.sum()) * (self.mask_mpp / 1000.0) ** 2

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (the masks themselves are written as PNGs)."""
        return {
            "slide_id": self.slide_id,
            "path": str(self.path),
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp,
            "appmag": self.appmag,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "tile_size": self.tile_size,
            "mask_mpp": self.mask_mpp,
            "mask_downsample": self.mask_downsample,
            "mask_shape": list(self.tissue.shape),
            "tissue_fraction": round(self.tissue_fraction, 6),
            "tissue_area_mm2": round(self.tissue_area_mm2, 6),
            "tumor_fraction": round(self.tumor_fraction, 6),
            "seed": self.seed,
        }


# --------------------------------------------------------------------------------------- fields


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (irregular outlines, stain drift)."""
    noise = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect"
    )
    return noise / max(float(noise.std()), 1e-6)


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return yy, xx


def _tissue_field(rng: np.random.Generator, shape: tuple[int, int], mask_mpp: float) -> np.ndarray:
    """Irregular blobs covering ~35-60 % of the slide, with holes; > 0 means tissue."""
    h, w = shape
    yy, xx = _grid(shape)
    blobs = np.full(shape, -np.inf, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.22, 0.4) * h, rng.uniform(0.18, 0.35) * w
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        blobs = np.maximum(blobs, 1.0 - np.sqrt(u * u + v * v))
    # outline wiggles: coarse ones scale with the slide, fine ones (~60 µm) are damped on big slides
    # so a large resection stays in one piece instead of breaking into crumbs
    coarse = max(2.0, 0.06 * min(h, w))
    fine_amp = 0.08 * min(1.0, 100.0 / min(h, w))
    fld = (
        blobs
        + 0.18 * _smooth_noise(rng, shape, coarse)
        + fine_amp * _smooth_noise(rng, shape, max(1.5, 60.0 / mask_mpp))
    )
    edge = np.minimum(np.minimum(yy, h - 1 - yy) / h, np.minimum(xx, w - 1 - xx) / w)
    fld -= np.clip(0.04 - edge, 0, None) * 20.0  # keep tissue off the slide border
    target = rng.uniform(0.35, 0.6)
    fld -= np.quantile(fld, 1.0 - target)
    # holes: lumens / fat, white inside tissue, 40-160 µm across, ~2 per mm² of tissue (at least 3)
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
    return fld.astype(np.float32)


def _tumor_field(
    rng: np.random.Generator, tissue_field: np.ndarray, fraction: float, mask_mpp: float
) -> np.ndarray:
    """Compact regions covering ``fraction`` of the tissue cells; >= 0 means tumour."""
    tissue = tissue_field > 0
    n_tissue = int(tissue.sum())
    k = round(fraction * n_tissue)
    if fraction <= 0 or n_tissue == 0:
        return np.full(tissue_field.shape, -1.0, np.float32)
    k = max(1, min(k, n_tissue))
    yy, xx = _grid(tissue_field.shape)
    core = np.argwhere(tissue_field > np.quantile(tissue_field[tissue], 0.3))
    radius = math.sqrt(k / math.pi)
    bumps = np.zeros(tissue_field.shape, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = core[rng.integers(len(core))]
        s = radius * rng.uniform(0.6, 1.2)
        bumps = np.maximum(bumps, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)))
    score = bumps + 0.08 * _smooth_noise(rng, tissue_field.shape, max(1.5, radius / 4))
    score += rng.uniform(0, 1e-6, score.shape).astype(np.float32)  # break ties: exactly k cells
    order = np.sort(score[tissue])[::-1]
    threshold = order[k - 1]
    out = score - threshold
    out[~tissue] = -1.0
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------- painting


def _upsample(padded: np.ndarray, pad: int, downsample: int, x0: int, y0: int, w: int, h: int):
    """Bilinear level-0 values of mask-scale fields [Hm, Wm, F] (edge-padded by ``pad`` cells).

    Level-0 pixel centre ``x + 0.5`` sits at mask coordinate ``(x + 0.5) / d - 0.5`` (cell centres),
    which is exactly cv2's integer-factor INTER_LINEAR convention, so a cropped resize with one cell
    of margin gives the same values as resizing the whole field.
    """
    d = downsample
    a0, a1 = x0 // d - 1 + pad, (x0 + w - 1) // d + 2 + pad
    b0, b1 = y0 // d - 1 + pad, (y0 + h - 1) // d + 2 + pad
    crop = np.ascontiguousarray(padded[b0:b1, a0:a1])
    up = cv2.resize(crop, ((a1 - a0) * d, (b1 - b0) * d), interpolation=cv2.INTER_LINEAR)
    oy, ox = y0 - (b0 - pad) * d, x0 - (a0 - pad) * d
    return up[oy : oy + h, ox : ox + w]


def _palette() -> np.ndarray:
    """RGB for every (class, stain level, noise level): painting a region is one table lookup."""
    s = (np.arange(STAIN_LEVELS, dtype=np.float32) + 0.5) / STAIN_LEVELS
    z = np.linspace(-2.5, 2.5, NOISE_LEVELS, dtype=np.float32)
    table = np.empty((3, STAIN_LEVELS, NOISE_LEVELS, 3), np.float32)
    table[0] = BACKGROUND + 2.0 * z[None, :, None]
    for k, (a, b) in ((1, STROMA), (2, TUMOR_BG)):
        table[k] = a + s[:, None, None] * (b - a) + 10.0 * z[None, :, None]
    return np.clip(np.round(table), 0, 255).astype(np.uint8).reshape(-1, 3)


def _periodic_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """A seamless noise tile (indexed modulo its size) so any region paints the same pixels."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    if sigma > 0:
        noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    return noise / max(float(noise.std()), 1e-6)


@dataclass
class _Nuclei:
    """Nuclei as ellipses in level-0 pixels, sorted by top edge so a strip finds its own quickly."""

    x: np.ndarray
    y: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    angle: np.ndarray
    color: np.ndarray
    top: np.ndarray
    bottom: np.ndarray

    @classmethod
    def concat(cls, parts: list[_Nuclei]) -> _Nuclei:
        merged = {
            k: np.concatenate([getattr(p, k) for p in parts]) for k in cls.__dataclass_fields__
        }
        order = np.argsort(merged["top"], kind="stable")
        return cls(**{k: v[order] for k, v in merged.items()})


def _sample_nuclei(
    rng: np.random.Generator,
    fields: np.ndarray,
    downsample: int,
    mpp: float,
    width: int,
    height: int,
    tumor: bool,
) -> _Nuclei:
    """Poisson points kept where the field says tissue (normal) or tumour, with sizes in µm."""
    area_um2 = width * height * mpp * mpp
    density = TUMOR_NUCLEI_PER_UM2 if tumor else NORMAL_NUCLEI_PER_UM2
    n = int(rng.poisson(area_um2 * density))
    x = rng.uniform(0, width, n)
    y = rng.uniform(0, height, n)
    coords = np.stack([(y + 0.5) / downsample - 0.5, (x + 0.5) / downsample - 0.5])
    tissue = ndimage.map_coordinates(fields[0], coords, order=1, mode="nearest") > 0
    in_tumor = ndimage.map_coordinates(fields[1], coords, order=1, mode="nearest") >= 0
    keep = tissue & (in_tumor if tumor else ~in_tumor)
    x, y, m = x[keep], y[keep], int(keep.sum())
    if tumor:
        major = rng.uniform(3.2, 5.5, m)
        minor = major * rng.uniform(0.65, 1.0, m)
        base, jitter = TUMOR_NUCLEUS, 14.0
    else:
        major = rng.uniform(1.8, 3.4, m)
        minor = major * np.where(
            rng.random(m) < 0.35, rng.uniform(0.25, 0.5, m), rng.uniform(0.7, 1.0, m)
        )
        base, jitter = NORMAL_NUCLEUS, 18.0
    ax, ay = major / mpp, minor / mpp
    color = np.clip(base + rng.normal(0, jitter, (m, 1)) + rng.normal(0, 5, (m, 3)), 0, 255)
    reach = np.ceil(ax) + 2
    return _Nuclei(
        x=x,
        y=y,
        ax=ax,
        ay=ay,
        angle=rng.uniform(0, 180, m),
        color=color.astype(np.float32),
        top=y - reach,
        bottom=y + reach,
    )


class _Painter:
    """Paints any level-0 region of one slide; the same pixel always gets the same colour."""

    SHIFT = 4  # sub-pixel bits for cv2 ellipse centres
    MARGIN = 8  # pixels painted around a region so its edge pixels match a larger region's

    def __init__(
        self, fields, downsample: int, mpp: float, width: int, height: int, rng, overhang: int
    ):
        self.downsample = downsample
        self.pad = 2 + math.ceil(overhang / downsample)  # edge tiles overhang the slide
        self.padded = np.pad(
            fields.transpose(1, 2, 0), ((self.pad,), (self.pad,), (0,)), mode="edge"
        )
        fine = _periodic_noise(rng, 256, 0.0)
        grain = _periodic_noise(rng, 256, 1.2 * 0.25 / mpp)
        noise = grain * 0.93 + fine * 0.37  # unit std: grain ~1 µm plus pixel noise
        levels = np.clip(np.round((noise + 2.5) / 5.0 * (NOISE_LEVELS - 1)), 0, NOISE_LEVELS - 1)
        self.noise = levels.astype(np.uint16)
        self.palette = _palette()
        self.nuclei = _Nuclei.concat(
            [
                _sample_nuclei(rng, fields, downsample, mpp, width, height, tumor=False),
                _sample_nuclei(rng, fields, downsample, mpp, width, height, tumor=True),
            ]
        )

    def _tiled_noise(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        size = self.noise.shape[0]
        rolled = np.roll(self.noise, (-(y0 % size), -(x0 % size)), axis=(0, 1))
        return np.tile(rolled, (h // size + 1, w // size + 1))[:h, :w]

    def region(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 [h, w, 3] of level 0 at (x0, y0): one palette lookup, then the nuclei."""
        up = _upsample(self.padded, self.pad, self.downsample, x0, y0, w, h)
        tissue = up[..., 0] > 0
        idx = tissue.astype(np.uint16)
        idx += tissue & (up[..., 1] >= 0)  # 0 background, 1 stroma, 2 tumour
        idx *= STAIN_LEVELS
        stain = up[..., 2] * STAIN_LEVELS
        np.clip(stain, 0, STAIN_LEVELS - 1, out=stain)
        idx += stain.astype(np.uint16)
        idx *= NOISE_LEVELS
        size = self.noise.shape[0]
        if x0 % size == 0 and y0 % size == 0 and w % size == 0 and h % size == 0:
            view = idx.reshape(h // size, size, w // size, size)  # no copy of the noise
            view += self.noise[None, :, None, :]
        else:
            idx += self._tiled_noise(x0, y0, w, h)
        # nuclei go on a canvas with a margin: cv2 clips anti-aliased shapes at the image border,
        # which would make tiles differ from the same pixels painted as part of a larger region
        m = self.MARGIN
        canvas = np.empty((h + 2 * m, w + 2 * m, 3), np.uint8)
        np.take(self.palette, idx, axis=0, out=canvas[m : m + h, m : m + w])
        self._draw_nuclei(canvas, x0 - m, y0 - m, w + 2 * m, h + 2 * m)
        return canvas[m : m + h, m : m + w]

    def _draw_nuclei(self, img: np.ndarray, x0: int, y0: int, w: int, h: int) -> None:
        nu = self.nuclei
        hi = int(np.searchsorted(nu.top, y0 + h, side="left"))
        idx = np.nonzero(nu.bottom[:hi] >= y0)[0]
        idx = idx[(nu.x[idx] + nu.ax[idx] + 2 >= x0) & (nu.x[idx] - nu.ax[idx] - 2 < x0 + w)]
        if not len(idx):
            return
        scale = 1 << self.SHIFT
        cx = np.round((nu.x[idx] - x0 - 0.5) * scale).astype(np.int64)
        cy = np.round((nu.y[idx] - y0 - 0.5) * scale).astype(np.int64)
        axes_x = np.round(nu.ax[idx] * scale).astype(np.int64)
        axes_y = np.round(nu.ay[idx] * scale).astype(np.int64)
        colors = nu.color[idx].round().astype(int).tolist()
        angles = nu.angle[idx].tolist()
        for k in range(len(idx)):
            cv2.ellipse(
                img,
                (int(cx[k]), int(cy[k])),
                (int(axes_x[k]), int(axes_y[k])),
                angles[k],
                0,
                360,
                colors[k],
                -1,
                cv2.LINE_AA,
                self.SHIFT,
            )


# -------------------------------------------------------------------------------------- writing


def _level_dimensions(width: int, height: int, smallest: int = 512) -> list[tuple[int, int]]:
    """Aperio-like pyramid: 4× steps until the longest side is at most ``smallest`` pixels."""
    dims = [(width, height)]
    while max(dims[-1]) > smallest and min(dims[-1]) >= 16:
        w, h = dims[-1]
        dims.append((w // 4, h // 4))
    return dims


def _downsample4(src: np.ndarray, rows: int = 1024) -> np.ndarray:
    """Box-filter 4× downsample (exact 4×4 means), in row chunks so memory maps stay cheap."""
    h, w = src.shape[0] // 4, src.shape[1] // 4
    out = np.empty((h, w, 3), np.uint8)
    for r in range(0, h, rows):
        r1 = min(h, r + rows)
        out[r:r1] = cv2.resize(
            src[4 * r : 4 * r1, : 4 * w], (w, r1 - r), interpolation=cv2.INTER_AREA
        )
    return out


def _descriptions(
    dims: list[tuple[int, int]], tile: int, quality: int, appmag: int, mpp: float, slide_id: str
) -> list[str]:
    w0, h0 = dims[0]
    head = f"{APERIO_HEADER}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile})"
    base = f"{head} JPEG/RGB Q={quality}|AppMag = {appmag}|MPP = {mpp:.4f}|Filename = {slide_id}"
    out = [base + "|ScanScope ID = WSI-MIL-SYNTH|Title = synthetic H&E"]
    for w, h in dims[1:]:
        out.append(f"{head} -> {w}x{h} JPEG/RGB Q={quality}")
    return out


def write_synthetic_slide(
    path: str | os.PathLike,
    *,
    width: int,
    height: int,
    mpp: float = 0.25,
    seed: int = 0,
    tumor_fraction: float = 0.0,
    appmag: int | None = None,
    mask_mpp: float = 8.0,
    tile_size: int = 256,
    quality: int = 85,
    strip_columns: int = 8192,
) -> SlideTruth:
    """Write one pyramidal Aperio ``.svs`` (tiled JPEG, 4× levels, thumbnail) and return its truth.

    ``tumor_fraction`` is the tumour area as a fraction of the tissue area (0 → negative slide).
    ``appmag`` defaults to the magnification of ``mpp`` (0.25 → 40, 0.5 → 20). ``mask_mpp`` is rounded
    so that one mask pixel is a whole number of level-0 pixels (``SlideTruth.mask_downsample``).
    The file is published atomically; level 0 is never held in memory whole.
    """
    import tifffile

    path = Path(path)
    if width < 64 or height < 64:
        raise ValueError(f"slide must be at least 64×64 pixels, got {width}×{height}")
    if not 0.0 <= tumor_fraction < 1.0:
        raise ValueError(f"tumor_fraction must be in [0, 1), got {tumor_fraction}")
    appmag = appmag or round(10.0 / mpp)
    downsample = max(1, round(mask_mpp / mpp))
    mask_mpp = downsample * mpp
    rng = np.random.default_rng(seed)
    mshape = (max(2, math.ceil(height / downsample)), max(2, math.ceil(width / downsample)))
    tissue_f = _tissue_field(rng, mshape, mask_mpp)
    tumor_f = _tumor_field(rng, tissue_f, tumor_fraction, mask_mpp)
    stain = 0.5 + 0.25 * _smooth_noise(rng, mshape, max(2.0, 150.0 / mask_mpp))
    fields = np.stack([tissue_f, tumor_f, stain]).astype(np.float32)
    painter = _Painter(fields, downsample, mpp, width, height, rng, overhang=tile_size)

    dims = _level_dimensions(width, height)
    descriptions = _descriptions(dims, tile_size, quality, appmag, mpp, path.stem)
    l1_bytes = dims[1][0] * dims[1][1] * 3 if len(dims) > 1 else 0
    res = (1e4 / mpp, 1e4 / mpp)
    common = dict(
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": quality},
        metadata=None,
        resolution=res,
        resolutionunit="CENTIMETER",
    )
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmpdir:
        if len(dims) > 1 and l1_bytes > _MEMMAP_BYTES:
            level1 = np.lib.format.open_memmap(
                Path(tmpdir) / "level1.npy",
                mode="w+",
                dtype=np.uint8,
                shape=(dims[1][1], dims[1][0], 3),
            )
        elif len(dims) > 1:
            level1 = np.empty((dims[1][1], dims[1][0], 3), np.uint8)
        else:
            level1 = None

        def level0_tiles() -> Iterator[np.ndarray]:
            padded_w = math.ceil(width / tile_size) * tile_size
            for y in range(0, height, tile_size):
                strip = np.empty((tile_size, padded_w, 3), np.uint8)
                for x in range(0, padded_w, strip_columns):
                    cw = min(strip_columns, padded_w - x)
                    strip[:, x : x + cw] = painter.region(x, y, cw, tile_size)
                # downsample before yielding: tifffile stops pulling after the last tile
                if level1 is not None:
                    r0 = y // 4
                    r1 = min(r0 + min(tile_size, height - y) // 4, level1.shape[0])
                    if r1 > r0:
                        level1[r0:r1] = _downsample4(strip[: 4 * (r1 - r0), :width])
                for x in range(0, padded_w, tile_size):
                    yield strip[:, x : x + tile_size]

        with atomic_path(path) as tmp:
            with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > (3 << 30)) as tif:
                tif.write(
                    level0_tiles(),
                    shape=(height, width, 3),
                    dtype=np.uint8,
                    tile=(tile_size, tile_size),
                    description=descriptions[0],
                    **common,
                )
                levels = [level1] if level1 is not None else []
                for _ in dims[2:]:
                    levels.append(_downsample4(levels[-1]))
                smallest = levels[-1] if levels else None
                if smallest is None:
                    smallest = painter.region(0, 0, width, height)
                scale = min(1.0, 768 / max(smallest.shape[:2]))
                thumb = cv2.resize(
                    np.ascontiguousarray(smallest),
                    (
                        max(1, round(smallest.shape[1] * scale)),
                        max(1, round(smallest.shape[0] * scale)),
                    ),
                    interpolation=cv2.INTER_AREA,
                )
                tif.write(
                    thumb,
                    description=f"{APERIO_HEADER}\r\n{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - ",
                    rowsperstrip=thumb.shape[0],
                    **common,
                )
                for desc, level in zip(descriptions[1:], levels, strict=True):
                    tif.write(level, tile=(tile_size, tile_size), description=desc, **common)

    return SlideTruth(
        slide_id=path.stem,
        path=path,
        width=width,
        height=height,
        mpp=float(mpp),
        appmag=int(appmag),
        mask_mpp=float(mask_mpp),
        mask_downsample=int(downsample),
        level_dimensions=dims,
        tile_size=tile_size,
        seed=int(seed),
        tissue=tissue_f > 0,
        tumor=(tissue_f > 0) & (tumor_f >= 0),
    )


# --------------------------------------------------------------------------------------- cohort

MASK_CONVENTION = (
    "mask pixel (i, j) covers level-0 pixels x in [j*d, (j+1)*d), y in [i*d, (i+1)*d), "
    "d = mask_downsample = mask_mpp / mpp; 255 = inside"
)


@dataclass(frozen=True)
class CohortSlide:
    """One slide of a cohort plan (everything needed to write it, decided before any pixel)."""

    slide_id: str
    case_id: str
    label: str
    appmag: int
    mpp: float
    width: int
    height: int
    tumor_fraction: float
    seed: int


def _slide_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def plan_cohort(
    n_slides: int,
    seed: int,
    *,
    size_scale: float = 1.0,
    tumor_fraction_range: tuple[float, float] = (0.02, 0.10),
    two_slide_fraction: float = 0.25,
) -> list[CohortSlide]:
    """Cases, labels, magnifications and sizes of a balanced cohort; ~``two_slide_fraction`` of the
    cases get two slides (same label). Default sizes (~2.3×1.65 mm) give ~50-300 patches of 256 px at
    0.5 µm/px per slide; ``size_scale`` scales both sides."""
    if n_slides < 2:
        raise ValueError(f"a cohort needs at least 2 slides (one per class), got {n_slides}")
    lo, hi = tumor_fraction_range
    if not 0 < lo <= hi < 1:
        raise ValueError(
            f"tumor_fraction_range must satisfy 0 < low <= high < 1, got {tumor_fraction_range}"
        )
    rng = np.random.default_rng(seed)
    n_cases = max(2, round(n_slides / (1 + two_slide_fraction)))
    n_double = min(n_slides - n_cases, n_cases)
    n_cases = n_slides - n_double
    positive = np.zeros(n_cases, bool)
    positive[rng.permutation(n_cases)[: n_cases // 2]] = True
    double = np.zeros(n_cases, bool)
    double[rng.permutation(n_cases)[:n_double]] = True
    mags = np.array([40, 20] * (n_slides // 2 + 1))[:n_slides][rng.permutation(n_slides)]
    plan = []
    for case in range(n_cases):
        for k in range(2 if double[case] else 1):
            i = len(plan)
            mag = int(mags[i])
            mpp = MAGNIFICATION_MPP[mag]
            w_um = rng.uniform(1800.0, 2800.0) * size_scale
            h_um = rng.uniform(1300.0, 2000.0) * size_scale
            frac = float(rng.uniform(lo, hi)) if positive[case] else 0.0
            plan.append(
                CohortSlide(
                    slide_id=f"case{case:03d}_{'ab'[k]}",
                    case_id=f"case{case:03d}",
                    label="tumor" if positive[case] else "normal",
                    appmag=mag,
                    mpp=mpp,
                    width=max(64, round(w_um / mpp)),
                    height=max(64, round(h_um / mpp)),
                    tumor_fraction=round(frac, 4),
                    seed=_slide_seed(seed, i),
                )
            )
    return plan


SURVIVAL_MODEL = (
    "burden = mean tumour fraction of the case's slides (0 for normal cases); event time (months) = "
    "60 * exp(-2 * burden / max_burden + 0.35 * N(0, 1)); a random round(censored_fraction * n) "
    "cases are censored at U(0.3, 0.95) * event time"
)


def survival_table(
    burden: dict[str, float], seed: int, *, censored_fraction: float = 0.3, max_burden: float = 0.10
):
    """``case_id,time,event``: higher tumour burden → shorter time; exactly ``round(censored_fraction
    * n)`` cases censored at random (independent of risk), observed before their event."""
    import pandas as pd

    rng = np.random.default_rng(np.random.SeedSequence([seed, 10**6]))
    cases = sorted(burden)
    risk = np.array([burden[c] / max_burden for c in cases])
    event_time = 60.0 * np.exp(-2.0 * risk + 0.35 * rng.standard_normal(len(cases)))
    n_censored = round(censored_fraction * len(cases))
    censored = np.zeros(len(cases), bool)
    censored[rng.permutation(len(cases))[:n_censored]] = True
    observed = np.where(censored, event_time * rng.uniform(0.3, 0.95, len(cases)), event_time)
    return pd.DataFrame(
        {
            "case_id": cases,
            "time": np.maximum(observed, 0.1).round(2),
            "event": (~censored).astype(int),
        }
    )


def _png_bytes(mask: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _write_cohort_slide(outdir: Path, item: CohortSlide, mask_mpp: float) -> dict[str, Any]:
    truth = write_synthetic_slide(
        outdir / "slides" / f"{item.slide_id}.svs",
        width=item.width,
        height=item.height,
        mpp=item.mpp,
        appmag=item.appmag,
        seed=item.seed,
        tumor_fraction=item.tumor_fraction,
        mask_mpp=mask_mpp,
    )
    for kind, mask in (("tissue", truth.tissue), ("tumor", truth.tumor)):
        with atomic_path(outdir / "masks" / f"{item.slide_id}_{kind}.png") as tmp:
            tmp.write_bytes(_png_bytes(mask))
    info = truth.summary()
    info.update(
        path=f"slides/{item.slide_id}.svs",
        case_id=item.case_id,
        label=item.label,
        target_tumor_fraction=item.tumor_fraction,
        tissue_mask=f"masks/{item.slide_id}_tissue.png",
        tumor_mask=f"masks/{item.slide_id}_tumor.png",
    )
    return info


def _read_cohort(outdir: Path) -> dict[str, Any] | None:
    """The cohort description if it exists and every file it names is there, else None."""
    try:
        cohort = json.loads((outdir / "cohort.json").read_text())
        files = [s[k] for s in cohort["slides"] for k in ("path", "tissue_mask", "tumor_mask")]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    names = ["labels.csv", "survival.csv", "masks/masks.json", *files]
    return cohort if all((outdir / f).is_file() for f in names) else None


def make_cohort(
    outdir: str | os.PathLike,
    n_slides: int = 24,
    seed: int = 0,
    *,
    size_scale: float = 1.0,
    tumor_fraction_range: tuple[float, float] = (0.02, 0.10),
    two_slide_fraction: float = 0.25,
    censored_fraction: float = 0.3,
    mask_mpp: float = 8.0,
    workers: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a cohort: ``slides/*.svs``, ``labels.csv``, ``survival.csv``, ``masks/*.png``,
    ``masks/masks.json`` and ``cohort.json`` (written last: its presence means the cohort is complete).

    A complete cohort made by the same generator code with the same parameters is reused as it is
    (``overwrite=True`` rewrites it), so the demo can call this on every run. Returns ``cohort.json``.
    """
    from pipeline import __version__
    from pipeline.log import get_logger
    from pipeline.store import write_json, write_text

    log = get_logger("synth")
    outdir = Path(outdir)
    params = {
        "n_slides": n_slides,
        "seed": seed,
        "size_scale": size_scale,
        "tumor_fraction_range": list(tumor_fraction_range),
        "two_slide_fraction": two_slide_fraction,
        "censored_fraction": censored_fraction,
        "mask_mpp": mask_mpp,
        "generator_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    existing = _read_cohort(outdir)
    if existing is not None and not overwrite and existing.get("params") == params:
        log.info("cohort in %s is complete and up to date; reusing it", outdir)
        return existing
    # from here on the folder is not a complete cohort: cohort.json goes first, comes back last
    (outdir / "cohort.json").unlink(missing_ok=True)
    plan = plan_cohort(
        n_slides,
        seed,
        size_scale=size_scale,
        tumor_fraction_range=tumor_fraction_range,
        two_slide_fraction=two_slide_fraction,
    )
    keep = {item.slide_id for item in plan}
    for old in (existing or {}).get("slides", []):
        if old.get("slide_id") not in keep:
            for key in ("path", "tissue_mask", "tumor_mask"):
                if old.get(key):
                    (outdir / old[key]).unlink(missing_ok=True)
    (outdir / "slides").mkdir(parents=True, exist_ok=True)
    (outdir / "masks").mkdir(parents=True, exist_ok=True)
    infos: list[dict[str, Any]] = []
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_write_cohort_slide, outdir, item, mask_mpp) for item in plan]
            for i, fut in enumerate(futures):
                infos.append(fut.result())
                log.info("slide %d/%d written: %s", i + 1, len(plan), plan[i].slide_id)
    else:
        for i, item in enumerate(plan):
            infos.append(_write_cohort_slide(outdir, item, mask_mpp))
            log.info(
                "slide %d/%d written: %s (%s, %dx, %dx%d px)",
                i + 1, len(plan), item.slide_id, item.label, item.appmag, item.width, item.height,
            )  # fmt: skip

    import pandas as pd

    labels = pd.DataFrame([{k: s[k] for k in ("slide_id", "case_id", "label")} for s in infos])
    write_text(outdir / "labels.csv", labels.to_csv(index=False))
    burden: dict[str, list[float]] = {}
    for s in infos:
        burden.setdefault(s["case_id"], []).append(s["tumor_fraction"])
    survival = survival_table(
        {c: float(np.mean(v)) for c, v in burden.items()},
        seed,
        censored_fraction=censored_fraction,
        max_burden=tumor_fraction_range[1],
    )
    write_text(outdir / "survival.csv", survival.to_csv(index=False))
    write_json(
        outdir / "masks" / "masks.json",
        {
            "convention": MASK_CONVENTION,
            "slides": {
                s["slide_id"]: {
                    k: s[k]
                    for k in (
                        "mask_mpp",
                        "mask_downsample",
                        "mask_shape",
                        "tissue_mask",
                        "tumor_mask",
                    )
                }
                for s in infos
            },
        },
    )
    cohort = {
        "generator": f"wsi-mil {__version__} synth",
        "params": params,
        "n_cases": len(burden),
        "mask_convention": MASK_CONVENTION,
        "survival_model": SURVIVAL_MODEL,
        "slides": infos,
    }
    write_json(outdir / "cohort.json", cohort)
    log.info("cohort of %d slides / %d cases written to %s", len(infos), len(burden), outdir)
    return cohort
