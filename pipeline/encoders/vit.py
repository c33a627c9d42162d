"""timm Vision Transformers: UNI, UNI2-h, Virchow2, H-optimus-0/1 and the Prov-GigaPath tile encoder.

Each recipe is the ``timm.create_model`` call of the model card, kept as data (``"SwiGLUPacked"`` and
``"SiLU"`` stand for ``timm.layers.SwiGLUPacked`` and ``torch.nn.SiLU`` until build time), so the
feature store can record the exact architecture and timm is imported only when a model is built.
Where a card loads through ``hf-hub:`` the keyword arguments are those of the repository's
``config.json`` (``model_args``) merged with the card's own; sources are cited per entry.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from pipeline.encoders.spec import (
    HOPTIMUS_MEAN,
    HOPTIMUS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
)
from pipeline.weights_hub import HubWeights


def recipe(architecture: str, **kwargs: Any) -> dict[str, Any]:
    return {"library": "timm", "architecture": architecture, "kwargs": kwargs}


def _layers(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Replace the symbolic layer names of a recipe with the classes timm expects."""
    import torch
    from timm.layers import SwiGLUPacked

    symbols = {"SwiGLUPacked": SwiGLUPacked, "SiLU": torch.nn.SiLU}
    return {k: symbols.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}


def build_timm(spec_recipe: dict[str, Any], config=None, state=None, **overrides: Any):
    """The recipe's model with random init (or on the meta device when the caller asks for it)."""
    import timm

    kwargs = _layers({**spec_recipe["kwargs"], **overrides})
    return timm.create_model(spec_recipe["architecture"], pretrained=False, **kwargs)


def cls_and_patch_mean(model, images):
    """concat(CLS, mean of the patch tokens), skipping the register tokens (Virchow2)."""
    import torch

    tokens = model(images)  # global_pool="" → every token after the final norm
    return torch.cat([tokens[:, 0], tokens[:, model.num_prefix_tokens :].mean(1)], dim=-1)


UNI = recipe(
    "vit_large_patch16_224",
    img_size=224,
    patch_size=16,
    init_values=1e-5,
    num_classes=0,
    dynamic_img_size=True,
)
# MahmoodLab/UNI README (github.com/mahmoodlab/UNI, "UNI2-h" local-checkpoint example).
UNI2_H = recipe(
    "vit_giant_patch14_224",
    img_size=224,
    patch_size=14,
    depth=24,
    num_heads=24,
    init_values=1e-5,
    embed_dim=1536,
    mlp_ratio=2.66667 * 2,
    num_classes=0,
    no_embed_class=True,
    mlp_layer="SwiGLUPacked",
    act_layer="SiLU",
    reg_tokens=8,
    dynamic_img_size=True,
)
# paige-ai/Virchow2 config.json model_args + the card's mlp_layer/act_layer.
VIRCHOW2 = recipe(
    "vit_huge_patch14_224",
    img_size=224,
    init_values=1e-5,
    num_classes=0,
    reg_tokens=4,
    mlp_ratio=5.3375,
    global_pool="",
    dynamic_img_size=True,
    mlp_layer="SwiGLUPacked",
    act_layer="SiLU",
)
# bioptimus/H-optimus-{0,1}: card's create_model(init_values=1e-5, dynamic_img_size=False) on the
# repository's architecture vit_giant_patch14_reg4_dinov2 at img_size 224 (token pooling).
H_OPTIMUS = recipe(
    "vit_giant_patch14_reg4_dinov2",
    img_size=224,
    init_values=1e-5,
    num_classes=0,
    global_pool="token",
    dynamic_img_size=False,
)
# prov-gigapath/prov-gigapath config.json model_args (ViT-g with 16-px patches).
GIGAPATH = recipe(
    "vit_giant_patch14_dinov2",
    img_size=224,
    in_chans=3,
    patch_size=16,
    embed_dim=1536,
    depth=40,
    num_heads=24,
    init_values=1e-5,
    mlp_ratio=5.33334,
    num_classes=0,
)

_MPP_NOTE = "trained at 20× (0.5 µm/px) per the card"


def specs() -> list[EncoderSpec]:
    return [
        EncoderSpec(
            name="uni",
            description="UNI (Chen et al. 2024), ViT-L/16 self-supervised on 100k H&E slides",
            dim=1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="bf16",
            build=partial(build_timm, UNI),
            pretrained=HubWeights("MahmoodLab/uni", gated=True),
            drops=("head.",),
            embedding="CLS token",
            mpp=0.5,
            params=303_350_784,
            params_source="ViT-L/16 (UNI paper: ViT-Large, 0.3B)",
            licence="CC-BY-NC-ND-4.0 (gated)",
            recipe=UNI,
        ),
        EncoderSpec(
            name="uni2_h",
            description="UNI2-h (Mahmood Lab 2025), ViT-H/14 with 8 registers and SwiGLU, 350k slides",
            dim=1536,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="bf16",
            build=partial(build_timm, UNI2_H),
            pretrained=HubWeights("MahmoodLab/UNI2-h", gated=True),
            drops=("head.",),
            embedding="CLS token",
            mpp=0.5,
            params=681_000_000,
            params_source="UNI2-h card / UNI README: 681M",
            licence="CC-BY-NC-ND-4.0 (gated)",
            recipe=UNI2_H,
            unverified="trained MPP (card: H&E and IHC at several magnifications; 0.5 assumed)",
        ),
        EncoderSpec(
            name="virchow2",
            description="Virchow2 (Paige 2024), ViT-H/14 with 4 registers and SwiGLU, 3.1M slides",
            dim=2560,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="fp16",
            build=partial(build_timm, VIRCHOW2),
            pretrained=HubWeights("paige-ai/Virchow2", gated=True),
            embed=cls_and_patch_mean,
            resize=224,
            interpolation="bicubic",
            embedding="concat(CLS, mean of the 256 patch tokens; the 4 register tokens excluded)",
            mpp=0.5,
            params=632_000_000,
            params_source="Virchow2 paper (arXiv 2408.00738): 632 million",
            licence="CC-BY-NC-ND-4.0 (gated)",
            recipe=VIRCHOW2,
            unverified="trained MPP: mixed 5×–40×; 0.5 µm/px (20×) is what the card's examples use",
        ),
        *[
            EncoderSpec(
                name=f"h_optimus_{v}",
                description=f"H-optimus-{v} (Bioptimus), ViT-g/14 with 4 registers and SwiGLU",
                dim=1536,
                input_size=224,
                mean=HOPTIMUS_MEAN,
                std=HOPTIMUS_STD,
                precision="fp16",
                build=partial(build_timm, H_OPTIMUS),
                pretrained=HubWeights(f"bioptimus/H-optimus-{v}", gated=True),
                drops=("head.",),
                embedding="CLS token",
                mpp=0.5,
                params=1_130_000_000,
                params_source="Bioptimus cards: ViT-g/14, 1.1B (1.13B on the hub page)",
                licence=licence,
                recipe=H_OPTIMUS,
                unverified="the card feeds 224×224 tiles without a resize; other sizes are "
                "resized (bilinear) as TRIDENT does",
            )
            for v, licence in (("0", "Apache-2.0 (gated)"), ("1", "CC-BY-NC-ND-4.0 (gated)"))
        ],
        EncoderSpec(
            name="gigapath",
            description="Prov-GigaPath tile encoder (Xu et al. 2024), ViT-g/16, 171k slides",
            dim=1536,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="fp16",
            build=partial(build_timm, GIGAPATH),
            pretrained=HubWeights("prov-gigapath/prov-gigapath", gated=True),
            drops=("head.",),
            resize=256,
            interpolation="bicubic",
            embedding="CLS token",
            mpp=0.5,
            params=1_134_000_000,
            params_source="Prov-GigaPath paper (Nature 2024): tile encoder 1.13B",
            licence="Apache-2.0 (gated)",
            recipe=GIGAPATH,
        ),
    ]
