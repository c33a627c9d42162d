"""Patch encoder registry: one entry per encoder holds everything needed to use it correctly.

As in timm, the builder, input geometry, normalisation, embedding rule, output dim, GPU precision and
weight source of an encoder live in one place (:class:`EncoderSpec`, one module per family:
:mod:`.cnn`, :mod:`.vit`, :mod:`.clip`, :mod:`.dinov2`), and :func:`create_encoder` is the only way to
get one. An encoder takes the uint8 patches the tiling stage defines and does its own resize, centre
crop and normalisation as a batched tensor op on the model's device (:meth:`Encoder.preprocess`).

Listing specs and validating names import neither torch nor timm; :func:`create_encoder` (in
:mod:`.model`) imports them when a model is built. Architectures are built locally with no network
and never with code from the hub; weights come from the source the user picked (:mod:`pipeline.weights`).
"""

from __future__ import annotations

from typing import Any

from pipeline.encoders.registry import UNSUPPORTED, encoder_names, get_spec, list_encoders
from pipeline.encoders.spec import (
    CLIP_MEAN,
    CLIP_STD,
    HOPTIMUS_MEAN,
    HOPTIMUS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    Unsupported,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "HOPTIMUS_MEAN",
    "HOPTIMUS_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RANDOM_SEED",
    "UNSUPPORTED",
    "Encoder",
    "EncoderSpec",
    "Unsupported",
    "create_encoder",
    "encoder_names",
    "get_spec",
    "list_encoders",
    "resolve_weights",
]

_LAZY = {"Encoder", "create_encoder", "resolve_weights", "RANDOM_SEED"}


def __getattr__(name: str) -> Any:  # torch is imported only when a model is wanted
    if name in _LAZY:
        from pipeline.encoders import model

        return getattr(model, name)
    raise AttributeError(f"module 'pipeline.encoders' has no attribute {name!r}")
