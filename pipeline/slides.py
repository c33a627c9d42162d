"""Open a whole-slide image, resolve its pixel size, and read regions at a target resolution.

OpenSlide is tried first (widest vendor support: Aperio, Hamamatsu, MIRAX, DICOM, ...); tiffslide is the
fallback for plain TIFFs OpenSlide refuses, or can be forced. Magnification is always derived from the
pixel size (MPP, µm/px), never from the pyramid level index, because vendors disagree on level layout.
Every failure becomes a :class:`SlideReadError` naming the slide and what to do (a bad ``reader``
setting is a :class:`ConfigError`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.errors import ConfigError, PipelineError, SlideReadError, first_line

Reader = Literal["auto", "openslide", "tiffslide"]

#: MPP values outside this range are not physical microscope pixels (e.g. a TIFF at 72 dpi).
PLAUSIBLE_MPP = (0.1, 2.0)
#: Properties that carry the pixel size in µm/px, most trusted first.
_MPP_KEYS = ("openslide.mpp-x", "tiffslide.mpp-x", "aperio.MPP")
_POWER_KEYS = ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag")


@dataclass
class Slide:
    """An open slide: the reader's handle plus the geometry every stage needs."""

    path: Path
    reader: str
    handle: Any = field(repr=False)
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return slide_id(self.path)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def metadata_mpp(self) -> float | None:
        """Pixel size from metadata when present and physically plausible, else None."""
        for key in _MPP_KEYS:
            value = _as_float(self.properties.get(key))
            if value is not None and PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]:
                return value
        return None

    def objective_power(self) -> float | None:
        for key in _POWER_KEYS:
            value = _as_float(self.properties.get(key))
            if value:
                return value
        return None

    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array [h, w, 3] of ``size`` (w, h) at ``level``, top-left (x, y) in level-0 px.

        Transparent pixels (outside scanned regions) become white, as background.
        """
        try:
            image = self.handle.read_region(
                (int(x), int(y)), int(level), (int(size[0]), int(size[1]))
            )
        except Exception as err:
            raise SlideReadError(
                self.path,
                f"cannot read pixels at ({x}, {y}) level {level} with {self.reader} ({first_line(err)})",
                "The file is probably truncated or damaged; re-copy it from the scanner.",
            ) from err
        return _to_rgb(np.asarray(image))

    def close(self) -> None:
        try:
            self.handle.close()
        except Exception:  # closing never matters for correctness
            pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def slide_id(path: str | os.PathLike) -> str:
    """The slide id is the file stem (``a/b/S1.svs`` → ``S1``), as in the data contract."""
    return Path(path).stem


def open_slide(path: str | os.PathLike, reader: Reader = "auto") -> Slide:
    """Open ``path`` with OpenSlide, falling back to tiffslide (or with the one ``reader`` names)."""
    p = Path(path)
    if not p.exists():
        raise SlideReadError(
            p, "slide file does not exist", "Check the path and the slides folder."
        )
    if p.is_file() and p.stat().st_size == 0:
        raise SlideReadError(p, "slide file is empty (0 bytes)", "Re-copy the slide.")
    order = {
        "auto": ("openslide", "tiffslide"),
        "openslide": ("openslide",),
        "tiffslide": ("tiffslide",),
    }
    if reader not in order:
        raise ConfigError(
            p, f"unknown slide reader '{reader}'", "Use auto, openslide or tiffslide."
        )
    failures = []
    for name in order[reader]:
        try:
            return _OPENERS[name](p)
        except Exception as err:  # each library raises its own types; we report them all together
            failures.append(f"{name}: {first_line(err)}")
    raise SlideReadError(
        p,
        "not a readable whole-slide image (" + "; ".join(failures) + ")",
        "Check that the file is a complete slide in a supported format; re-copy it if it was truncated.",
    )


def _wrap(path: Path, reader: str, handle: Any) -> Slide:
    """A :class:`Slide` over an OpenSlide or TiffSlide handle (both expose the same geometry API)."""
    return Slide(
        path=path,
        reader=reader,
        handle=handle,
        level_dimensions=tuple(tuple(map(int, d)) for d in handle.level_dimensions),
        level_downsamples=tuple(float(d) for d in handle.level_downsamples),
        properties=dict(handle.properties),
    )


def _open_openslide(path: Path) -> Slide:
    import openslide

    return _wrap(path, "openslide", openslide.OpenSlide(str(path)))


def _open_tiffslide(path: Path) -> Slide:
    import tiffslide

    return _wrap(path, "tiffslide", tiffslide.TiffSlide(str(path)))


_OPENERS = {"openslide": _open_openslide, "tiffslide": _open_tiffslide}


def resolve_mpp(
    slide: Slide, override: float | None = None, default: float | None = None
) -> tuple[float, str]:
    """The slide's µm/px and where it came from: metadata, then ``override``, then ``default``.

    An explicit per-slide ``override`` (``--mpp`` or the slide sheet) wins even over metadata, so a
    known-bad scanner header can be corrected; ``default`` (config) applies only when metadata has none.
    """
    if override is not None:
        _check_plausible(slide, override, "the --mpp / slide-sheet value")
        return float(override), "override"
    meta = slide.metadata_mpp()
    if meta is not None:
        return meta, "metadata"
    if default is not None:
        _check_plausible(slide, default, "slides.default_mpp")
        return float(default), "config default"
    implausible = [
        f"{key}={value:g}"
        for key in _MPP_KEYS
        if (value := _as_float(slide.properties.get(key))) is not None
    ]
    found = f" (ignored implausible {', '.join(implausible)} µm/px)" if implausible else ""
    raise SlideReadError(
        slide.path,
        f"no usable pixel size (MPP) in the slide metadata{found}",
        "Pass --mpp (e.g. --mpp 0.25 for 40x, 0.5 for 20x), add the slide to the slide sheet "
        "(slide_id,mpp), or set slides.default_mpp in the config.",
    )


def _check_plausible(slide: Slide, mpp: float, what: str) -> None:
    if not (PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]):
        # a per-slide override is this slide's problem; the config default is every slide's
        kind = ConfigError if what == "slides.default_mpp" else SlideReadError
        raise kind(
            slide.path,
            f"{what} gives {mpp} µm/px, outside the plausible {PLAUSIBLE_MPP[0]}-{PLAUSIBLE_MPP[1]} µm/px",
            "Give the pixel size in micrometres per pixel (0.25 for 40x, 0.5 for 20x).",
        )


@dataclass(frozen=True)
class PatchGeometry:
    """How one patch of ``patch_size`` px at ``target_mpp`` maps onto the slide."""

    slide_mpp: float
    target_mpp: float
    patch_size: int
    level0_patch_size: int  # patch side in level-0 pixels (also the grid step without overlap)
    read_level: int  # pyramid level read from
    read_size: int  # side read at that level, resized (area) to patch_size

    def as_attrs(self) -> dict[str, Any]:
        """The fields as tile-store attrs (read back by :meth:`from_attrs`)."""
        return {
            "slide_mpp": self.slide_mpp,
            "target_mpp": self.target_mpp,
            "patch_size": self.patch_size,
            "level0_patch_size": self.level0_patch_size,
            "read_level": self.read_level,
            "read_size": self.read_size,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], where: Any = "tile store") -> PatchGeometry:
        """The geometry a tile store was cut with; one clear error when its attrs lack a field."""
        kinds = {"slide_mpp": float, "target_mpp": float}
        names = list(cls.__dataclass_fields__)
        missing = [k for k in names if k not in attrs]
        if missing:
            raise PipelineError(
                where,
                f"tile store lacks the patch geometry ({', '.join(missing)})",
                "Re-run `wsi-mil tile` for this slide.",
            )
        return cls(**{k: kinds.get(k, int)(attrs[k]) for k in names})


def scale_factor(slide_mpp: float, target_mpp: float, tolerance: float) -> float:
    """Level-0 pixels per target pixel, snapped to an integer when within ``tolerance``.

    A 0.2527 µm/px scan counts as 40× (factor 2, patches of exactly 512 level-0 px) and a 0.499 µm/px
    scan as 20× (factor 1), so patches line up with the pyramid and reads need no fractional resize.
    """
    factor = target_mpp / slide_mpp
    nearest = round(factor)
    if nearest >= 1 and abs(factor - nearest) <= tolerance * factor:
        return float(nearest)
    return factor


def patch_geometry(
    slide: Slide, slide_mpp: float, target_mpp: float, patch_size: int, tolerance: float
) -> PatchGeometry:
    """Choose the level and read size for patches at ``target_mpp`` (finest level not coarser than it)."""
    factor = scale_factor(slide_mpp, target_mpp, tolerance)
    level0 = max(1, int(round(patch_size * factor)))
    limit = target_mpp * (1 + tolerance)
    level = _finest_level_not_coarser(slide, slide_mpp, limit)
    read_size = max(1, int(round(level0 / slide.level_downsamples[level])))
    return PatchGeometry(slide_mpp, target_mpp, patch_size, level0, level, read_size)


def _finest_level_not_coarser(slide: Slide, slide_mpp: float, limit_mpp: float) -> int:
    """The coarsest level whose µm/px is still ≤ ``limit_mpp`` (level 0 when none is)."""
    levels = [i for i, down in enumerate(slide.level_downsamples) if slide_mpp * down <= limit_mpp]
    return max(levels, key=lambda i: slide.level_downsamples[i]) if levels else 0


def read_patch(slide: Slide, x: int, y: int, geometry: PatchGeometry) -> np.ndarray:
    """The patch with level-0 top-left (x, y) as RGB uint8 [patch_size, patch_size, 3]."""
    import cv2

    region = slide.read_region(x, y, geometry.read_level, (geometry.read_size, geometry.read_size))
    if geometry.read_size != geometry.patch_size:
        region = cv2.resize(
            region, (geometry.patch_size, geometry.patch_size), interpolation=cv2.INTER_AREA
        )
    return region


def read_at_mpp(
    slide: Slide, slide_mpp: float, out_mpp: float, max_strip_px: int = 4096
) -> tuple[np.ndarray, float]:
    """The whole slide as RGB at about ``out_mpp`` µm/px, with bounded memory.

    Reads the pyramid level nearest below ``out_mpp`` (finer or equal) in horizontal strips and
    downsamples each strip (area), so level 0 of a 100k×100k slide is never held whole.
    Returns the image and its exact µm/px along x.
    """
    import cv2

    level = _finest_level_not_coarser(slide, slide_mpp, out_mpp * 1.001)
    width0, height0 = slide.dimensions
    out_w = max(1, int(round(width0 * slide_mpp / out_mpp)))
    out_h = max(1, int(round(height0 * slide_mpp / out_mpp)))
    lw, lh = slide.level_dimensions[level]
    down = slide.level_downsamples[level]
    if lw * lh <= max_strip_px * max_strip_px:
        image = slide.read_region(0, 0, level, (lw, lh))
        return cv2.resize(
            image, (out_w, out_h), interpolation=cv2.INTER_AREA
        ), width0 * slide_mpp / out_w
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    rows_per_out = lh / out_h
    strip_out = max(1, int(max_strip_px * max_strip_px // max(lw, 1) / rows_per_out))
    for oy in range(0, out_h, strip_out):
        oy1 = min(out_h, oy + strip_out)
        ly0, ly1 = int(math.floor(oy * rows_per_out)), min(lh, int(math.ceil(oy1 * rows_per_out)))
        strip = slide.read_region(0, int(round(ly0 * down)), level, (lw, max(1, ly1 - ly0)))
        out[oy:oy1] = cv2.resize(strip, (out_w, oy1 - oy), interpolation=cv2.INTER_AREA)
    return out, width0 * slide_mpp / out_w


def _to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:
        import cv2

        rgb = cv2.cvtColor(array, cv2.COLOR_RGBA2RGB)  # contiguous copy, far faster than a slice
        alpha = array[..., 3]
        if alpha.min() == 255:  # the usual case: fully scanned, nothing to composite
            return rgb
        # OpenSlide returns premultiplied RGBA; transparent (unscanned) areas become white background.
        # cv2.add saturates in uint8, the same as widening, adding and clipping, ~10× faster.
        return cv2.add(rgb, cv2.merge([255 - alpha] * 3))
    return np.ascontiguousarray(array[..., :3])


def _as_float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) and result > 0 else None
