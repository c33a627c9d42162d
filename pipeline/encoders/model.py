"""Build an encoder from its spec: weights read once, no throw-away random initialisation.

With a checkpoint, the architecture is built with its parameters on the meta device (no memory, no
init cost; buffers such as position ids stay real) and the checkpoint's tensors are then assigned in
place (``load_state_dict(assign=True)``), so a 1.1B-parameter model costs one read of its file instead
of a random init, a read and a copy. ``random`` weights get a real, seeded initialisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.encoders.registry import get_spec
from pipeline.encoders.spec import EncoderSpec
from pipeline.errors import PipelineError
from pipeline.weights import (
    PackageWeights,
    ResolvedWeights,
    load_strict,
    local_weight_files,
    read_state_dict,
    warn_random,
)
from pipeline.weights_hub import fetch_hub_file

RANDOM_SEED = 0


class Encoder(nn.Module):
    """An encoder ready for inference: ``forward`` maps normalised images to [B, dim] features."""

    def __init__(self, spec: EncoderSpec, trunk: nn.Module, provenance: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.trunk = trunk
        self.provenance = provenance
        scale = [255.0 * s for s in spec.std]
        shift = [255.0 * m for m in spec.mean]
        self.register_buffer("_scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 RGB [B, H, W, 3] → float [B, 3, S, S] as the card's torchvision transform does it:
        antialiased resize of the shorter side (bilinear or bicubic), centre crop, normalise."""
        x = patches.permute(0, 3, 1, 2).float()
        spec = self.spec
        h, w = x.shape[-2:]
        target = spec.resize_to
        if min(h, w) != target:
            size = (target, int(target * w / h)) if h <= w else (int(target * h / w), target)
            x = F.interpolate(
                x, size=size, mode=spec.interpolation, antialias=True, align_corners=False
            )
            if spec.interpolation == "bicubic":
                x = x.clamp_(0.0, 255.0)  # PIL clips bicubic overshoot to the uint8 range
        x = _center_crop(x, spec.input_size)
        return (x - self._shift) / self._scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.spec.embed is not None:
            return self.spec.embed(self.trunk, images)
        return self.trunk(images)

    def attrs(self) -> dict[str, Any]:
        """Provenance for the feature store: the spec's description plus the weights' fingerprint."""
        return {**self.spec.store_attrs(), **self.provenance}


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's ``CenterCrop`` offsets (``int(round((H - size) / 2))``)."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h < size or w < size:
        raise PipelineError(
            "patches",
            f"{h}×{w} patches are smaller than the {size}-px crop",
            "Tile larger patches.",
        )
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def resolve_weights(spec: EncoderSpec, weights: str) -> ResolvedWeights:
    """Turn ``pretrained`` / ``random`` / a path into concrete files (downloading if allowed)."""
    if weights == "random":
        return ResolvedWeights("random", f"random (torch seed {RANDOM_SEED})")
    if weights == "pretrained":
        source = spec.pretrained
        if isinstance(source, PackageWeights):
            return ResolvedWeights("pretrained", source.describe(), [source.locate()])
        files = [fetch_hub_file(source, source.files)]
        config = fetch_hub_file(source, [source.config_file]) if source.config_file else None
        return ResolvedWeights("pretrained", source.describe(), files, config)
    path = Path(weights).expanduser()
    files, config = local_weight_files(path)
    return ResolvedWeights("file", str(path.resolve()), files, config)


def create_encoder(name: str, weights: str = "pretrained", **overrides: Any) -> Encoder:
    """An :class:`Encoder` in eval mode on the CPU, with the weights the user asked for.

    ``overrides`` change architecture arguments of the recipe (e.g. ``depth=2``); tests and benchmarks
    use them to run a family's code path on a small model. Never needed for real features.
    """
    spec = get_spec(name)
    resolved = resolve_weights(spec, weights)
    if not resolved.files:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            trunk = spec.build(resolved.config, None, **overrides)
        warn_random(name)
        return Encoder(spec, trunk, resolved.provenance()).eval()
    where = resolved.source if resolved.choice == "pretrained" else str(resolved.files[0])
    state = read_state_dict(resolved.files)
    if spec.convert is not None:
        state = spec.convert(state, where)
    with parameters_on_meta():
        trunk = spec.build(resolved.config, state, **overrides)
    load_strict(trunk, state, where, f"encoder '{name}'", ignore=spec.ignores, assign=True)
    del state
    return Encoder(spec, trunk, resolved.provenance()).eval()


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every ``nn.Parameter`` on the meta device while a model is built (so its init costs
    nothing); buffers stay real because checkpoints do not hold the non-persistent ones."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(
                param.to("meta"), requires_grad=param.requires_grad
            )

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register
