"""What one registry entry says about an encoder, as plain data (no torch import).

An :class:`EncoderSpec` is the model card in code: architecture recipe, input geometry (resize,
centre crop, interpolation), normalisation, which tokens form the embedding, the resolution the model
was trained at, the published size and where the weights come from. Listing encoders and validating a
config read these specs without importing torch; building one is :func:`pipeline.encoders.create_encoder`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.weights import PackageWeights
from pipeline.weights_hub import HubWeights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
#: Bioptimus' H&E statistics (H-optimus-0 / H-optimus-1 model cards), not ImageNet's.
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
#: Relative difference between tiling and training resolution above which extraction warns.
MPP_TOLERANCE = 0.1


@dataclass(frozen=True)
class EncoderSpec:
    """How to build, feed and load one encoder, and what its features are."""

    name: str
    description: str
    dim: int
    input_size: int  # side of the square the model sees (after resize and centre crop)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    precision: str  # autocast dtype used on CUDA with --precision auto
    build: Callable[..., Any]  # (config.json | None, state | None, **overrides) -> module
    pretrained: HubWeights | PackageWeights
    embed: Callable[[Any, Any], Any] | None = (
        None  # (module, images) -> [B, dim]; default module(x)
    )
    convert: Callable[[dict, str], dict] | None = None  # checkpoint layout -> module layout
    drops: tuple[str, ...] = ()  # checkpoint key prefixes of parts this encoder leaves out
    drops_anywhere: tuple[str, ...] = ()  # ... and key substrings (buffers some exports include)
    resize: int | None = None  # shorter edge resized to this before the crop (None: input_size)
    interpolation: str = "bilinear"  # bilinear | bicubic, antialiased like PIL
    embedding: str = "pooled output"  # which tokens form the feature, in words
    mpp: float | None = None  # µm/px the model was trained at (None: natural images)
    params: int | None = None  # published parameter count
    params_source: str = ""  # where that count is published
    licence: str = "see the model card"
    recipe: dict[str, Any] = field(default_factory=dict)  # architecture as the card writes it
    unverified: str = ""  # model-card facts that could not be checked, in words

    def ignores(self, key: str) -> bool:
        return key.startswith(self.drops) or any(s in key for s in self.drops_anywhere)

    @property
    def resize_to(self) -> int:
        return self.resize or self.input_size

    @property
    def model_id(self) -> str:
        return self.pretrained.describe().split(" ")[0]

    @property
    def gated(self) -> bool:
        return bool(getattr(self.pretrained, "gated", False))

    def preprocess_words(self) -> str:
        crop = f", centre crop {self.input_size}" if self.resize_to != self.input_size else ""
        return f"{self.interpolation} (antialiased) resize of the shorter side to {self.resize_to}{crop}"

    def store_attrs(self) -> dict[str, Any]:
        """What a feature store must record about the encoder (weights provenance is added by
        :meth:`pipeline.encoders.model.Encoder.attrs`, which calls this)."""
        return {
            "encoder": self.name,
            "model_id": self.model_id,
            "dim": self.dim,
            "input_size": self.input_size,
            "resize": self.preprocess_words(),
            "preprocess": {
                "resize_shorter_side": self.resize_to,
                "center_crop": self.input_size,
                "interpolation": self.interpolation,
                "antialias": True,
            },
            "mean": list(self.mean),
            "std": list(self.std),
            "embedding": self.embedding,
            "trained_mpp": self.mpp,
            "architecture": _jsonable(self.recipe),
            "licence": self.licence,
        }

    def mpp_warning(self, tiling_mpp: float | None) -> str | None:
        """One line when patches are cut at another resolution than the model was trained at."""
        if self.mpp is None or tiling_mpp is None:
            return None
        if abs(float(tiling_mpp) - self.mpp) <= MPP_TOLERANCE * self.mpp:
            return None
        return (
            f"encoder {self.name} was trained at {self.mpp} µm/px but the patches are "
            f"{float(tiling_mpp):g} µm/px; its features may be off-distribution "
            f"(set tiling.target_mpp: {self.mpp})"
        )


@dataclass(frozen=True)
class Unsupported:
    """A model users ask for that the registry deliberately does not build, and why."""

    name: str
    model_id: str
    dim: int
    reason: str


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return getattr(value, "__name__", str(value))
