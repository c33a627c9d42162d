"""CLIP image towers: PLIP, from the repository's config.json when there is one."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.encoders.spec import CLIP_MEAN, CLIP_STD, EncoderSpec
from pipeline.errors import PipelineError
from pipeline.weights_hub import HubWeights


def build_plip(config: Path | None = None, state=None, **overrides):
    """CLIP image tower + projection (vinid/plip = CLIP ViT-B/32, 512-d projection)."""
    from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

    if config is None:
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
            **overrides,
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


def clip_image_embeds(model, images):
    return model(pixel_values=images).image_embeds


def specs() -> list[EncoderSpec]:
    return [
        EncoderSpec(
            name="plip",
            description="PLIP (Huang et al. 2023), CLIP ViT-B/32 image tower tuned on pathology "
            "image-text pairs",
            dim=512,
            input_size=224,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            precision="bf16",
            build=build_plip,
            pretrained=HubWeights("vinid/plip", config_file="config.json"),
            embed=clip_image_embeds,
            drops=("text_model.", "text_projection.", "logit_scale"),
            drops_anywhere=("position_ids",),
            embedding="CLIP image embedding (projected pooled output)",
            params=87_849_216,
            params_source="CLIP ViT-B/32 image tower + projection",
            licence="MIT (see the card)",
            recipe={"library": "transformers", "architecture": "CLIPVisionModelWithProjection"},
        ),
    ]
