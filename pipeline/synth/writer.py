"""Write one synthetic slide as a pyramidal Aperio ``.svs`` and return its ground truth.

Level 0 is painted strip by strip and streamed tile by tile into tifffile, and the 4× level below it is
accumulated on the way (in a temporary memory map for big slides), so a 40000×30000 slide is written
without ever holding level 0 in memory. The other levels are 4× box-filter reductions of the one above,
as Aperio scanners write them, plus a thumbnail page that openslide lists as an associated image.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.store import atomic_path
from pipeline.synth import fields as F
from pipeline.synth.painter import Ink, Painter

MAGNIFICATION_MPP = {40: 0.25, 20: 0.5}
APERIO_HEADER = "Aperio Image Library v12.0.0 (wsi-mil synthetic)"
_MEMMAP_BYTES = 64 << 20  # levels below 0 larger than this go to a temporary memory map
_DECOY_STREAM, _INK_STREAM = 1, 2  # tags of the optional content's own random streams


@dataclass
class SlideTruth:
    """What was written: geometry, scanner metadata and the low-resolution ground truth.

    ``tissue``, ``tumor``, ``decoy`` and ``ink`` are boolean masks at ``mask_mpp`` µm/px; mask pixel
    ``(i, j)`` covers level-0 pixels ``x in [j*mask_downsample, (j+1)*mask_downsample)``, same for ``y``
    with ``i``. ``tumor_fraction`` is tumour area / tissue area measured on those masks. ``decoy`` and
    ``ink`` (pen strokes and the dark border: what must never become a patch) are all False on a slide
    written without them; tissue under ink is still tissue.
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
    decoy: np.ndarray = field(repr=False, default=None)
    ink: np.ndarray = field(repr=False, default=None)

    def __post_init__(self):
        for name in ("decoy", "ink"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros_like(self.tissue))

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
    def decoy_fraction(self) -> float:
        """Decoy area / tissue area (mask scale)."""
        n = int(self.tissue.sum())
        return float(self.decoy.sum()) / n if n else 0.0

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


def level_dimensions(width: int, height: int, smallest: int = 512) -> list[tuple[int, int]]:
    """Aperio-like pyramid: 4× steps until the longest side is at most ``smallest`` pixels."""
    dims = [(width, height)]
    while max(dims[-1]) > smallest and min(dims[-1]) >= 16:
        w, h = dims[-1]
        dims.append((w // 4, h // 4))
    return dims


def downsample4(src: np.ndarray, rows: int = 1024) -> np.ndarray:
    """Box-filter 4× downsample (exact 4×4 means), in row chunks so memory maps stay cheap."""
    h, w = src.shape[0] // 4, src.shape[1] // 4
    out = np.empty((h, w, 3), np.uint8)
    for r in range(0, h, rows):
        r1 = min(h, r + rows)
        out[r:r1] = cv2.resize(
            src[4 * r : 4 * r1, : 4 * w], (w, r1 - r), interpolation=cv2.INTER_AREA
        )
    return out


def descriptions(
    dims: list[tuple[int, int]], tile: int, quality: int, appmag: int, mpp: float, slide_id: str
) -> list[str]:
    """Aperio ImageDescription of every pyramid level (what openslide reads MPP and AppMag from)."""
    w0, h0 = dims[0]
    head = f"{APERIO_HEADER}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile})"
    base = f"{head} JPEG/RGB Q={quality}|AppMag = {appmag}|MPP = {mpp:.4f}|Filename = {slide_id}"
    out = [base + "|ScanScope ID = WSI-MIL-SYNTH|Title = synthetic H&E"]
    for w, h in dims[1:]:
        out.append(f"{head} -> {w}x{h} JPEG/RGB Q={quality}")
    return out


@dataclass(frozen=True)
class _Content:
    """Everything a slide is painted from, decided before any pixel."""

    fields: np.ndarray  # [F, Hm, Wm]: tissue, tumour, stain (, decoy)
    ink: Ink | None
    decoy_rng: np.random.Generator | None


def _slide_content(
    seed: int,
    mshape: tuple[int, int],
    mask_mpp: float,
    tumor_fraction: float,
    decoy_fraction: float,
    ink: Sequence[str],
    border: bool,
) -> tuple[np.random.Generator, _Content]:
    """The fields of one slide and the main random stream, left where the painter continues it."""
    rng = np.random.default_rng(seed)
    tissue_f = F.tissue_field(rng, mshape, mask_mpp)
    tumor_f = F.tumor_field(rng, tissue_f, tumor_fraction, mask_mpp)
    stain = 0.5 + 0.25 * F.smooth_noise(rng, mshape, max(2.0, 150.0 / mask_mpp))
    layers = [tissue_f, tumor_f, stain]
    decoy_rng = None
    if decoy_fraction > 0:
        decoy_rng = F.stream(seed, _DECOY_STREAM)
        layers.append(F.decoy_field(decoy_rng, tissue_f, tumor_f, decoy_fraction, mask_mpp))
    pen = None
    if ink or border:
        density = F.ink_fields(F.stream(seed, _INK_STREAM), tissue_f, tuple(ink), mask_mpp, border)
        colours = [F.INK_RGB[c] for c in ink] + ([F.BORDER_RGB] if border else [])
        pen = Ink(density, np.array(colours, np.float32))
    return rng, _Content(np.stack(layers).astype(np.float32), pen, decoy_rng)


def _level1_buffer(tmpdir: str, dims: list[tuple[int, int]]) -> np.ndarray | None:
    """Where the 4× level is accumulated: memory, or a memory map for big slides; None if no level."""
    if len(dims) < 2:
        return None
    shape = (dims[1][1], dims[1][0], 3)
    if dims[1][0] * dims[1][1] * 3 > _MEMMAP_BYTES:
        path = Path(tmpdir) / "level1.npy"
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    return np.empty(shape, np.uint8)


def _level0_tiles(
    painter: Painter, width: int, height: int, tile: int, strip_columns: int, level1
) -> Iterator[np.ndarray]:
    """Level-0 tiles in row-major order, filling ``level1`` (4× smaller) strip by strip."""
    padded_w = math.ceil(width / tile) * tile
    for y in range(0, height, tile):
        strip = np.empty((tile, padded_w, 3), np.uint8)
        for x in range(0, padded_w, strip_columns):
            cw = min(strip_columns, padded_w - x)
            strip[:, x : x + cw] = painter.region(x, y, cw, tile)
        # downsample before yielding: tifffile stops pulling after the last tile
        if level1 is not None:
            r0 = y // 4
            r1 = min(r0 + min(tile, height - y) // 4, level1.shape[0])
            if r1 > r0:
                level1[r0:r1] = downsample4(strip[: 4 * (r1 - r0), :width])
        for x in range(0, padded_w, tile):
            yield strip[:, x : x + tile]


def _thumbnail(smallest: np.ndarray) -> np.ndarray:
    """The associated thumbnail: the smallest level, at most 768 px on its long side."""
    scale = min(1.0, 768 / max(smallest.shape[:2]))
    size = (
        max(1, round(smallest.shape[1] * scale)),
        max(1, round(smallest.shape[0] * scale)),
    )
    return cv2.resize(np.ascontiguousarray(smallest), size, interpolation=cv2.INTER_AREA)


def _write_tiff(tmp, painter: Painter, dims, descs, tile: int, quality: int, mpp: float, level1, strip_columns: int):  # fmt: skip
    """Level 0 (streamed), the thumbnail page, then the reduced levels, as Aperio orders them."""
    import tifffile

    (width, height) = dims[0]
    common = dict(
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": quality},
        metadata=None,
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
    )
    with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > (3 << 30)) as tif:
        tif.write(
            _level0_tiles(painter, width, height, tile, strip_columns, level1),
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            description=descs[0],
            **common,
        )
        levels = [level1] if level1 is not None else []
        for _ in dims[2:]:
            levels.append(downsample4(levels[-1]))
        thumb = _thumbnail(levels[-1] if levels else painter.region(0, 0, width, height))
        tif.write(
            thumb,
            description=f"{APERIO_HEADER}\r\n{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - ",
            rowsperstrip=thumb.shape[0],
            **common,
        )
        for desc, level in zip(descs[1:], levels, strict=True):
            tif.write(level, tile=(tile, tile), description=desc, **common)


def _check(width: int, height: int, tumor_fraction: float, decoy_fraction: float, ink) -> None:
    if width < 64 or height < 64:
        raise ValueError(f"slide must be at least 64×64 pixels, got {width}×{height}")
    if not 0.0 <= tumor_fraction < 1.0:
        raise ValueError(f"tumor_fraction must be in [0, 1), got {tumor_fraction}")
    if not 0.0 <= decoy_fraction < 0.5:
        raise ValueError(f"decoy_fraction must be in [0, 0.5), got {decoy_fraction}")
    unknown = sorted(set(ink) - set(F.INK_RGB))
    if unknown:
        raise ValueError(f"unknown ink colour(s) {unknown}; choose from {sorted(F.INK_RGB)}")


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
    decoy_fraction: float = 0.0,
    ink: Sequence[str] = (),
    border: bool = False,
) -> SlideTruth:
    """Write one pyramidal Aperio ``.svs`` (tiled JPEG, 4× levels, thumbnail) and return its truth.

    ``tumor_fraction`` is the tumour area as a fraction of the tissue area (0 → negative slide).
    ``appmag`` defaults to the magnification of ``mpp`` (0.25 → 40, 0.5 → 20). ``mask_mpp`` is rounded
    so that one mask pixel is a whole number of level-0 pixels (``SlideTruth.mask_downsample``).
    Optional artefacts and distractors, each from a random stream of its own (off: the same pixels as
    without the option): ``decoy_fraction`` of the tissue in dark, tumour-like regions that are not
    tumour; ``ink`` pen colours (``blue``, ``green``, ``red``, ``black``), each one stroke on the glass
    and one across the tissue outline; ``border`` a near-black band along the left edge.
    The file is published atomically; level 0 is never held in memory whole.
    """
    path = Path(path)
    _check(width, height, tumor_fraction, decoy_fraction, ink)
    appmag = appmag or round(10.0 / mpp)
    downsample = max(1, round(mask_mpp / mpp))
    mask_mpp = downsample * mpp
    mshape = (max(2, math.ceil(height / downsample)), max(2, math.ceil(width / downsample)))
    rng, content = _slide_content(
        seed, mshape, mask_mpp, tumor_fraction, decoy_fraction, ink, border
    )
    painter = Painter(
        content.fields, downsample, mpp, width, height, rng, overhang=tile_size,
        decoy_rng=content.decoy_rng, ink=content.ink,
    )  # fmt: skip
    dims = level_dimensions(width, height)
    descs = descriptions(dims, tile_size, quality, appmag, mpp, path.stem)
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmpdir:
        level1 = _level1_buffer(tmpdir, dims)
        with atomic_path(path) as tmp:
            _write_tiff(tmp, painter, dims, descs, tile_size, quality, mpp, level1, strip_columns)
    return _truth(path, dims, mpp, appmag, mask_mpp, downsample, tile_size, seed, content)


def _truth(path, dims, mpp, appmag, mask_mpp, downsample, tile_size, seed, content) -> SlideTruth:
    """The ground truth of a written slide, from the fields it was painted from."""
    fld = content.fields
    tissue = fld[0] > 0
    tumor = tissue & (fld[1] >= 0)
    decoy = tissue & ~tumor & (fld[3] >= 0) if fld.shape[0] > 3 else None
    ink = content.ink.density.max(-1) > 0.5 if content.ink is not None else None
    return SlideTruth(
        slide_id=path.stem,
        path=path,
        width=dims[0][0],
        height=dims[0][1],
        mpp=float(mpp),
        appmag=int(appmag),
        mask_mpp=float(mask_mpp),
        mask_downsample=int(downsample),
        level_dimensions=dims,
        tile_size=tile_size,
        seed=int(seed),
        tissue=tissue,
        tumor=tumor,
        decoy=decoy,
        ink=ink,
    )
