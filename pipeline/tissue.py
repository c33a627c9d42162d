"""Tissue segmentation as CLAM does it, with thresholds in physical units.

The recipe is CLAM's (HSV saturation, median blur, fixed or Otsu threshold, morphological closing,
contours with holes from ``RETR_CCOMP``, area filters, at most ``max_holes`` holes per piece), run on a
low-resolution image of the whole slide at about ``seg_mpp`` µm/px. Where CLAM measures areas in
"512×512 level-0 patches" (so the same defaults mean 1.6 mm² on a 40× scan and 6.6 mm² on a 20× one, and
drop every piece of a small biopsy), here tissue and hole areas are in µm², so one set of defaults suits a
needle biopsy and a large resection at any magnification.

Saturation alone takes pen ink and dark scanner borders for tissue (ink is saturated; near-black pixels
have an unstable, often high saturation because max(R, G, B) is small). So before the contours are
traced, artefacts are found by colour on the same median-blurred image and cut out of the mask: pen ink
by hue and value (blue, green, red marker, black marker; ``pen_colors``) and near-black regions
(``near_black``), each widened by ``ARTEFACT_MARGIN_UM`` to take the ink's soft edge with it. The rules are
ours, in HSV (OpenCV scale: hue 0-179, saturation and value 0-255); like histolab's pen filters they
accept losing a little tissue under the ink. H&E never has a green or sky-blue hue, so those rules are
safe; the red rule needs a marker-like saturation (eosin and frozen-section pink stay below ~150).

The result keeps the contours (for the QC image) and renders "tissue minus holes minus artefacts" as a
mask at the segmentation resolution, which is what the patch grid measures its tissue fraction against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from pipeline.errors import PipelineError
from pipeline.slides import Slide, read_at_mpp

#: Otsu on a blank slide splits sensor noise; its threshold never goes below this saturation.
OTSU_FLOOR = 8

#: Pen-ink rules: (hue ranges, minimum saturation, value range), all on the median-blurred image.
#: Hue ranges are inclusive; red wraps around 0.
PEN_RULES: dict[str, tuple[tuple[tuple[int, int], ...], int, tuple[int, int]]] = {
    "blue": (((95, 125),), 70, (40, 255)),  # 190-250°: below haematoxylin's violet (~260-300°)
    "green": (((35, 94),), 40, (40, 255)),  # 70-188°: no H&E stain has it
    "red": (((0, 6), (174, 179)), 170, (60, 255)),  # marker red, more saturated than eosin/blood
    "black": (((0, 179),), 0, (0, 70)),  # dark marker; tissue at 8 µm/px stays above ~80
}
#: Near-black: max(R, G, B) at most this (scanner borders, slide-edge shadows).
NEAR_BLACK_VALUE = 40
#: Artefact masks are widened by this much (µm) to take the ink's soft, paler edge with them.
ARTEFACT_MARGIN_UM = 24.0


@dataclass(frozen=True)
class TissueParams:
    """Segmentation settings: the ``tiling`` config keys of the same names (defaults live in the schema)."""

    seg_mpp: float
    sthresh: int
    use_otsu: bool
    mthresh: int
    close: int
    min_tissue_area_um2: float
    min_hole_area_um2: float
    max_holes: int
    pen_colors: tuple[str, ...]
    near_black: bool

    @classmethod
    def from_config(cls, tiling: dict[str, Any]) -> TissueParams:
        values = {k: tiling[k] for k in cls.__dataclass_fields__}
        values["pen_colors"] = tuple(values["pen_colors"])
        return cls(**values)

    def as_attrs(self) -> dict[str, Any]:
        out = asdict(self)
        out["pen_colors"] = list(self.pen_colors)
        return out


@dataclass
class Tissue:
    """Tissue pieces and their holes, as contours in mask pixels, plus the rendered mask.

    ``scale`` is level-0 pixels per mask pixel along (x, y); ``mask`` is 1 on tissue minus holes minus
    artefacts. ``excluded`` is 1 where an artefact rule fired (widened), and ``artefact_area_mm2`` the
    area of each rule's exclusion (rules may overlap; ``total`` is their union).
    """

    mask: np.ndarray = field(repr=False)
    scale: tuple[float, float]
    slide_mpp: float
    pieces: list[np.ndarray] = field(repr=False)
    holes: list[list[np.ndarray]] = field(repr=False)
    threshold: float
    excluded: np.ndarray = field(repr=False, default=None)
    artefact_area_mm2: dict[str, float] = field(default_factory=dict)

    @property
    def mask_mpp(self) -> tuple[float, float]:
        return self.scale[0] * self.slide_mpp, self.scale[1] * self.slide_mpp

    @property
    def area_mm2(self) -> float:
        """Area of tissue minus holes, measured on the mask the patch grid uses."""
        mx, my = self.mask_mpp
        return float(np.count_nonzero(self.mask)) * mx * my / 1e6


def saturation_mask(rgb: np.ndarray, params: TissueParams) -> tuple[np.ndarray, float]:
    """Binary (0/255) mask of stained pixels and the saturation threshold used."""
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    k = (
        params.mthresh if params.mthresh % 2 else params.mthresh + 1
    )  # medianBlur needs an odd kernel
    if k > 1:
        sat = cv2.medianBlur(sat, k)
    if params.use_otsu:
        otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        threshold = max(float(otsu), OTSU_FLOOR)
    else:
        threshold = float(params.sthresh)
    _, mask = cv2.threshold(sat, threshold, 255, cv2.THRESH_BINARY)
    if params.close > 0:
        kernel = np.ones((params.close, params.close), np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return mask, threshold


def _blurred_hsv(rgb: np.ndarray, mthresh: int) -> np.ndarray:
    """HSV of the median-blurred image (the same kernel as the saturation mask's)."""
    k = mthresh if mthresh % 2 else mthresh + 1
    return cv2.cvtColor(cv2.medianBlur(rgb, k) if k > 1 else rgb, cv2.COLOR_RGB2HSV)


def _pen_mask(hsv: np.ndarray, colour: str) -> np.ndarray:
    """Pixels of one pen colour by its hue, saturation and value rule (``PEN_RULES``)."""
    if colour not in PEN_RULES:
        raise PipelineError(
            "config",
            f"tiling.pen_colors has unknown colour {colour!r}",
            f"Use some of: {', '.join(PEN_RULES)}.",
        )
    hues, min_sat, (v_lo, v_hi) = PEN_RULES[colour]
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    in_hue = np.zeros(h.shape, bool)
    for lo, hi in hues:
        in_hue |= (h >= lo) & (h <= hi)
    return in_hue & (s >= min_sat) & (v >= v_lo) & (v <= v_hi)


def artefact_masks(rgb: np.ndarray, params: TissueParams, pixel_um: float) -> dict[str, np.ndarray]:
    """uint8 masks (1 = artefact) of each enabled rule: ``pen_<colour>`` and ``near_black``.

    Specks of one or two pixels are dropped (opening) and what remains is widened by
    ``ARTEFACT_MARGIN_UM``, so the paler edge of a stroke, which the colour rule misses but the
    saturation threshold still calls tissue, goes with it.
    """
    hsv = _blurred_hsv(rgb, params.mthresh)
    raw = {f"pen_{c}": _pen_mask(hsv, c) for c in params.pen_colors}
    if params.near_black:
        raw["near_black"] = rgb.max(axis=-1) <= NEAR_BLACK_VALUE
    r = max(1, round(ARTEFACT_MARGIN_UM / pixel_um))
    widen = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    speck = np.ones((3, 3), np.uint8)
    out = {}
    for name, hit in raw.items():
        m = cv2.morphologyEx(hit.astype(np.uint8), cv2.MORPH_OPEN, speck)
        out[name] = cv2.dilate(m, widen) if m.any() else m
    return out


def filter_contours(
    mask: np.ndarray, pixel_area_um2: float, params: TissueParams
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Tissue pieces (net of all their holes) ≥ ``min_tissue_area_um2``, each with its largest holes.

    A hole is kept (cut out of the tissue) when ≥ ``min_hole_area_um2``, at most ``max_holes`` per piece;
    smaller or extra holes count as tissue, as in CLAM.
    """
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return [], []
    parent = hierarchy[0][:, 3]
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parent):
        if p >= 0:
            children.setdefault(int(p), []).append(i)
    area = np.array([cv2.contourArea(c) for c in contours]) * pixel_area_um2
    pieces, holes = [], []
    for i in np.flatnonzero(parent < 0):
        kids = children.get(int(i), [])
        net = area[i] - sum(area[k] for k in kids)
        if net <= 0 or net < params.min_tissue_area_um2:
            continue
        big = sorted(
            (k for k in kids if area[k] >= params.min_hole_area_um2), key=lambda k: -area[k]
        )
        pieces.append(contours[i])
        holes.append([contours[k] for k in big[: params.max_holes]])
    return pieces, holes


def render_mask(
    shape: tuple[int, int], pieces: list[np.ndarray], holes: list[list[np.ndarray]]
) -> np.ndarray:
    """uint8 mask (1 = tissue) of the pieces with their holes cut out.

    Contours trace the tissue pixels on the border, so a hole is filled with 0 and its outline (tissue
    pixels) drawn back, keeping the rendered mask equal to the thresholded one inside kept pieces.
    """
    out = np.zeros(shape, np.uint8)
    if pieces:
        cv2.drawContours(out, pieces, -1, 1, thickness=cv2.FILLED)
    flat = [h for hs in holes for h in hs]
    if flat:
        cv2.drawContours(out, flat, -1, 0, thickness=cv2.FILLED)
        cv2.drawContours(out, flat, -1, 1, thickness=1)
    return out


def segment_rgb(
    rgb: np.ndarray, scale: tuple[float, float], slide_mpp: float, params: TissueParams
) -> Tissue:
    """Segment a low-resolution RGB image whose pixels are ``scale`` level-0 pixels wide (x, y).

    Artefacts are cut out of the thresholded mask before the contours are traced (so a stroke on the
    glass makes no tissue piece) and again from the rendered mask (a stroke inside tissue is a hole
    that the ``max_holes`` / ``min_hole_area_um2`` rules might otherwise fill back in).
    """
    binary, threshold = saturation_mask(rgb, params)
    pixel_area = scale[0] * scale[1] * slide_mpp * slide_mpp
    artefacts = artefact_masks(rgb, params, float(np.sqrt(pixel_area)))
    excluded = np.zeros(binary.shape, np.uint8)
    for m in artefacts.values():
        excluded |= m
    binary[excluded > 0] = 0
    pieces, holes = filter_contours(binary, pixel_area, params)
    mask = render_mask(binary.shape, pieces, holes)
    mask[excluded > 0] = 0
    areas = {k: float(np.count_nonzero(m)) * pixel_area / 1e6 for k, m in artefacts.items()}
    areas["total"] = float(np.count_nonzero(excluded)) * pixel_area / 1e6
    return Tissue(mask, scale, slide_mpp, pieces, holes, threshold, excluded, areas)


def read_for_segmentation(
    slide: Slide, slide_mpp: float, params: TissueParams
) -> tuple[np.ndarray, tuple[float, float]]:
    """The whole slide at about ``seg_mpp`` (bounded memory) and its level-0 px per pixel (x, y)."""
    rgb, _ = read_at_mpp(slide, slide_mpp, params.seg_mpp)
    if rgb.dtype != np.uint8:
        raise PipelineError(
            slide.path,
            f"pixels are {rgb.dtype}, not 8-bit RGB (brightfield H&E is expected)",
            "Convert the slide to an 8-bit RGB pyramid (e.g. vips tiffsave --compression jpeg).",
        )
    width0, height0 = slide.dimensions
    return rgb, (width0 / rgb.shape[1], height0 / rgb.shape[0])
