"""Paint any level-0 region of a synthetic slide from its mask-scale fields.

A region is the fields interpolated to level 0 (bilinear, cell centres), turned into H&E-like colours by
one lookup in a table indexed by (class, stain level, noise level), then nuclei drawn as anti-aliased
ellipses and pen ink multiplied on top. The same level-0 pixel always gets the same colour, whatever region
it is painted in, so a slide can be streamed tile by tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

BACKGROUND = np.array([242.0, 240.0, 244.0], np.float32)
STROMA = (np.array([236.0, 168.0, 200.0], np.float32), np.array([214.0, 128.0, 178.0], np.float32))
TUMOR_BG = (np.array([176.0, 110.0, 178.0], np.float32), np.array([150.0, 88.0, 160.0], np.float32))
#: decoys (lymphoid-aggregate-like): as dark as tumour, told apart only by their nuclei
DECOY_BG = (np.array([170.0, 108.0, 182.0], np.float32), np.array([146.0, 86.0, 166.0], np.float32))
NORMAL_NUCLEUS = np.array([92.0, 56.0, 140.0], np.float32)
TUMOR_NUCLEUS = np.array([52.0, 22.0, 98.0], np.float32)
DECOY_NUCLEUS = np.array([48.0, 26.0, 92.0], np.float32)

NORMAL_NUCLEI_PER_UM2 = 1 / 180.0  # sparse, small nuclei in stroma
TUMOR_NUCLEI_PER_UM2 = 1 / 55.0  # crowded, large nuclei in tumour
DECOY_NUCLEI_PER_UM2 = 1 / 28.0  # packed, small, round nuclei in decoys
STAIN_LEVELS = 32  # stain-drift steps in the colour table
NOISE_LEVELS = 32  # grain-noise steps in the colour table
CLASSES = 4  # background, stroma, tumour, decoy


def upsample(padded: np.ndarray, pad: int, downsample: int, x0: int, y0: int, w: int, h: int):
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
    if up.ndim == 2:  # cv2 drops a single channel
        up = up[..., None]
    oy, ox = y0 - (b0 - pad) * d, x0 - (a0 - pad) * d
    return up[oy : oy + h, ox : ox + w]


def palette() -> np.ndarray:
    """RGB for every (class, stain level, noise level): painting a region is one table lookup."""
    s = (np.arange(STAIN_LEVELS, dtype=np.float32) + 0.5) / STAIN_LEVELS
    z = np.linspace(-2.5, 2.5, NOISE_LEVELS, dtype=np.float32)
    table = np.empty((CLASSES, STAIN_LEVELS, NOISE_LEVELS, 3), np.float32)
    table[0] = BACKGROUND + 2.0 * z[None, :, None]
    for k, (a, b) in ((1, STROMA), (2, TUMOR_BG), (3, DECOY_BG)):
        table[k] = a + s[:, None, None] * (b - a) + 10.0 * z[None, :, None]
    return np.clip(np.round(table), 0, 255).astype(np.uint8).reshape(-1, 3)


def periodic_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """A seamless noise tile (indexed modulo its size) so any region paints the same pixels."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    if sigma > 0:
        noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    return noise / max(float(noise.std()), 1e-6)


@dataclass
class Nuclei:
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
    def concat(cls, parts: list[Nuclei]) -> Nuclei:
        merged = {
            k: np.concatenate([getattr(p, k) for p in parts]) for k in cls.__dataclass_fields__
        }
        order = np.argsort(merged["top"], kind="stable")
        return cls(**{k: v[order] for k, v in merged.items()})


def _nucleus_shapes(rng: np.random.Generator, m: int, kind: str):
    """Semi-axes (µm), base colour and colour jitter of ``m`` nuclei of one kind."""
    if kind == "tumor":
        major = rng.uniform(3.2, 5.5, m)
        return major, major * rng.uniform(0.65, 1.0, m), TUMOR_NUCLEUS, 14.0
    if kind == "decoy":
        major = rng.uniform(2.2, 2.9, m)
        return major, major * rng.uniform(0.85, 1.0, m), DECOY_NUCLEUS, 8.0
    major = rng.uniform(1.8, 3.4, m)
    minor = major * np.where(
        rng.random(m) < 0.35, rng.uniform(0.25, 0.5, m), rng.uniform(0.7, 1.0, m)
    )
    return major, minor, NORMAL_NUCLEUS, 18.0


def sample_nuclei(
    rng: np.random.Generator,
    fields: np.ndarray,
    downsample: int,
    mpp: float,
    width: int,
    height: int,
    kind: str,
) -> Nuclei:
    """Poisson points kept where the fields say stroma (``normal``), tumour or decoy, sizes in µm."""
    area_um2 = width * height * mpp * mpp
    density = {
        "normal": NORMAL_NUCLEI_PER_UM2,
        "tumor": TUMOR_NUCLEI_PER_UM2,
        "decoy": DECOY_NUCLEI_PER_UM2,
    }[kind]
    n = int(rng.poisson(area_um2 * density))
    x = rng.uniform(0, width, n)
    y = rng.uniform(0, height, n)
    coords = np.stack([(y + 0.5) / downsample - 0.5, (x + 0.5) / downsample - 0.5])
    tissue = ndimage.map_coordinates(fields[0], coords, order=1, mode="nearest") > 0
    in_tumor = ndimage.map_coordinates(fields[1], coords, order=1, mode="nearest") >= 0
    if kind == "decoy":
        in_decoy = ndimage.map_coordinates(fields[3], coords, order=1, mode="nearest") >= 0
        keep = tissue & in_decoy & ~in_tumor
    else:
        keep = tissue & (in_tumor if kind == "tumor" else ~in_tumor)
    x, y, m = x[keep], y[keep], int(keep.sum())
    major, minor, base, jitter = _nucleus_shapes(rng, m, kind)
    ax, ay = major / mpp, minor / mpp
    color = np.clip(base + rng.normal(0, jitter, (m, 1)) + rng.normal(0, 5, (m, 3)), 0, 255)
    reach = np.ceil(ax) + 2
    return Nuclei(
        x=x,
        y=y,
        ax=ax,
        ay=ay,
        angle=rng.uniform(0, 180, m),
        color=color.astype(np.float32),
        top=y - reach,
        bottom=y + reach,
    )


@dataclass(frozen=True)
class Ink:
    """Pen ink of a slide: densities [Hm, Wm, C] on the mask grid and the RGB each channel transmits."""

    density: np.ndarray
    rgb: np.ndarray  # float32 [C, 3]


class Painter:
    """Paints any level-0 region of one slide; the same pixel always gets the same colour.

    ``fields`` is [F, Hm, Wm]: tissue, tumour, stain and, when the slide has decoys, decoy.
    ``decoy_rng`` draws the decoys' nuclei (from a stream of their own); ``ink`` is multiplied on top.
    """

    SHIFT = 4  # sub-pixel bits for cv2 ellipse centres
    MARGIN = 8  # pixels painted around a region so its edge pixels match a larger region's

    def __init__(
        self,
        fields,
        downsample: int,
        mpp: float,
        width: int,
        height: int,
        rng,
        overhang: int,
        *,
        decoy_rng: np.random.Generator | None = None,
        ink: Ink | None = None,
    ):
        self.downsample = downsample
        self.pad = 2 + math.ceil(overhang / downsample)  # edge tiles overhang the slide
        self.padded = self._pad(fields.transpose(1, 2, 0))
        fine = periodic_noise(rng, 256, 0.0)
        grain = periodic_noise(rng, 256, 1.2 * 0.25 / mpp)
        noise = grain * 0.93 + fine * 0.37  # unit std: grain ~1 µm plus pixel noise
        levels = np.clip(np.round((noise + 2.5) / 5.0 * (NOISE_LEVELS - 1)), 0, NOISE_LEVELS - 1)
        self.noise = levels.astype(np.uint16)
        self.palette = palette()
        parts = [
            sample_nuclei(rng, fields, downsample, mpp, width, height, "normal"),
            sample_nuclei(rng, fields, downsample, mpp, width, height, "tumor"),
        ]
        self.has_decoys = fields.shape[0] > 3
        if self.has_decoys:
            decoy_rng = decoy_rng if decoy_rng is not None else rng
            parts.append(sample_nuclei(decoy_rng, fields, downsample, mpp, width, height, "decoy"))
        self.nuclei = Nuclei.concat(parts)
        self.ink = ink
        self.ink_padded = self._pad(ink.density) if ink is not None else None

    def _pad(self, hwc: np.ndarray) -> np.ndarray:
        return np.pad(hwc, ((self.pad,), (self.pad,), (0,)), mode="edge")

    def _tiled_noise(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        size = self.noise.shape[0]
        rolled = np.roll(self.noise, (-(y0 % size), -(x0 % size)), axis=(0, 1))
        return np.tile(rolled, (h // size + 1, w // size + 1))[:h, :w]

    def _colour_index(self, up: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Palette row of every pixel: class, then stain level, then noise level."""
        tissue = up[..., 0] > 0
        idx = tissue.astype(np.uint16)
        idx += tissue & (up[..., 1] >= 0)  # 0 background, 1 stroma, 2 tumour
        if self.has_decoys:
            idx[tissue & (up[..., 1] < 0) & (up[..., 3] >= 0)] = 3  # decoy
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
        return idx

    def region(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 [h, w, 3] of level 0 at (x0, y0): one palette lookup, the nuclei, the ink."""
        up = upsample(self.padded, self.pad, self.downsample, x0, y0, w, h)
        idx = self._colour_index(up, x0, y0, w, h)
        # nuclei go on a canvas with a margin: cv2 clips anti-aliased shapes at the image border,
        # which would make tiles differ from the same pixels painted as part of a larger region
        m = self.MARGIN
        canvas = np.empty((h + 2 * m, w + 2 * m, 3), np.uint8)
        np.take(self.palette, idx, axis=0, out=canvas[m : m + h, m : m + w])
        self._draw_nuclei(canvas, x0 - m, y0 - m, w + 2 * m, h + 2 * m)
        out = canvas[m : m + h, m : m + w]
        return out if self.ink is None else self._apply_ink(out, x0, y0, w, h)

    def _apply_ink(self, rgb: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Ink is a translucent dye: each channel multiplies the light by its colour where it lies."""
        density = upsample(self.ink_padded, self.pad, self.downsample, x0, y0, w, h)
        np.clip(density, 0.0, 1.0, out=density)
        transmit = np.ones((h, w, 3), np.float32)
        for c, colour in enumerate(self.ink.rgb):
            a = density[..., c : c + 1]
            transmit *= 1.0 - a * (1.0 - colour / 255.0)
        return np.clip(np.round(rgb * transmit), 0, 255).astype(np.uint8)

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
