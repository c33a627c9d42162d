"""transformers DINOv2 models: Phikon-v2 and Midnight, built from a config written here.

The hub repositories load with ``AutoModel.from_pretrained``; we build the same ``Dinov2Model`` from a
local ``Dinov2Config`` (no code from the hub is ever executed). When a ``config.json`` comes with the
weights (hub or folder), every field that changes the computation must agree with the recipe, or the
load stops with the field named: the store then never records one architecture and holds another.
The position-embedding grid is the one exception: it is read from the checkpoint, because
``Dinov2Model`` interpolates it to the input anyway and the card's model uses the stored grid.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.encoders.spec import HALF, IMAGENET_MEAN, IMAGENET_STD, EncoderSpec
from pipeline.errors import PipelineError
from pipeline.weights_hub import HubWeights

#: Dinov2Config fields that change what the model computes (checked against a shipped config.json).
COMPUTE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mlp_ratio",
    "patch_size",
    "num_channels",
    "use_swiglu_ffn",
    "layer_norm_eps",
    "hidden_act",
    "qkv_bias",
)
POSITIONS = "embeddings.position_embeddings"


def recipe(**config: Any) -> dict[str, Any]:
    return {"library": "transformers", "architecture": "Dinov2Model", "config": config}


# owkin/phikon-v2: DINOv2 ViT-L/16 at 224 px (Filiot et al. 2024).
PHIKON_V2 = recipe(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    mlp_ratio=4,
    patch_size=16,
    image_size=224,
    num_channels=3,
    use_swiglu_ffn=False,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
    qkv_bias=True,
    layerscale_value=1e-5,
)
# kaiko-ai/midnight: DINOv2 ViT-g/14 (SwiGLU FFN, 1536 wide, 40 blocks).
MIDNIGHT = recipe(
    hidden_size=1536,
    num_hidden_layers=40,
    num_attention_heads=24,
    mlp_ratio=4,
    patch_size=14,
    image_size=224,
    num_channels=3,
    use_swiglu_ffn=True,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
    qkv_bias=True,
    layerscale_value=1e-5,
)


def build_dinov2(spec_recipe: dict[str, Any], config=None, state=None, **overrides: Any):
    from transformers import Dinov2Config, Dinov2Model

    values = {**spec_recipe["config"], **overrides}
    if config is not None:
        _check_config(values, Path(config))
    if state is not None and POSITIONS in state:
        grid = math.isqrt(state[POSITIONS].shape[1] - 1)
        values["image_size"] = grid * values["patch_size"]
    return Dinov2Model(Dinov2Config(**values))


def _check_config(values: dict[str, Any], path: Path) -> None:
    try:
        shipped = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PipelineError(path, f"cannot read config.json ({err})", "Re-download it.") from err
    if shipped.get("model_type", "dinov2") != "dinov2":
        raise PipelineError(
            path,
            f"config.json describes a '{shipped.get('model_type')}' model, not DINOv2",
            "Pass the weights of this encoder (see `wsi-mil encoders`).",
        )
    differ = [
        f"{k}={shipped[k]!r} (registry: {values[k]!r})"
        for k in COMPUTE_FIELDS
        if k in shipped and shipped[k] != values[k]
    ]
    if differ:
        raise PipelineError(
            path,
            "config.json differs from the registry's recipe: " + ", ".join(differ),
            "These weights are for another architecture; pick the matching --encoder.",
        )


def from_hub_layout(state: dict, where: str) -> dict:
    """Dinov2Model names from a checkpoint saved from a wrapper (``dinov2.`` prefix). ``mask_token``
    only serves masked pre-training and some exports leave it out; inference never reads it."""
    if state and all(k.startswith("dinov2.") for k in state):
        state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    if "embeddings.mask_token" not in state and "embeddings.cls_token" in state:
        state = dict(state, **{"embeddings.mask_token": state["embeddings.cls_token"][0] * 0})
    return state


def cls_token(model, images):
    return model(pixel_values=images).last_hidden_state[:, 0]


def cls_and_patch_mean(model, images):
    import torch

    tokens = model(pixel_values=images).last_hidden_state
    return torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)


def specs() -> list[EncoderSpec]:
    return [
        EncoderSpec(
            name="phikon_v2",
            description="Phikon-v2 (Owkin 2024), DINOv2 ViT-L/16 on 460M tiles of public slides",
            dim=1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="bf16",
            build=partial(build_dinov2, PHIKON_V2),
            pretrained=HubWeights("owkin/phikon-v2", config_file="config.json"),
            embed=cls_token,
            convert=from_hub_layout,
            interpolation="bicubic",
            embedding="CLS token (last_hidden_state[:, 0])",
            mpp=0.5,
            params=303_000_000,
            params_source="hub page (safetensors): 303M; paper: ViT-L",
            licence="Owkin non-commercial licence",
            recipe=PHIKON_V2,
            unverified="preprocessor_config.json (card uses AutoImageProcessor): bicubic "
            "shorter-side 224 + centre crop assumed; identical for 224-px tiles",
        ),
        EncoderSpec(
            name="midnight",
            description="Midnight-12k (kaiko.ai 2025), DINOv2 ViT-g/14 trained on 12k TCGA slides",
            dim=3072,
            input_size=224,
            mean=HALF,
            std=HALF,
            precision="fp16",
            build=partial(build_dinov2, MIDNIGHT),
            pretrained=HubWeights("kaiko-ai/midnight", config_file="config.json"),
            embed=cls_and_patch_mean,
            convert=from_hub_layout,
            embedding="concat(CLS, mean of the patch tokens)",
            mpp=0.5,
            params=1_140_000_000,
            params_source="hub page (safetensors): 1.14B; paper: ViT-g/14",
            licence="MIT",
            recipe=MIDNIGHT,
            unverified="position grid of the released config (224 assumed; taken from the "
            "checkpoint when loading); trained MPP (several magnifications; 0.5 assumed)",
        ),
    ]
