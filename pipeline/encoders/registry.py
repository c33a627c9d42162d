"""The registry: every encoder the pipeline can build, by name, plus the ones it refuses and why."""

from __future__ import annotations

from pipeline.encoders import clip, cnn, dinov2, vit
from pipeline.encoders.spec import EncoderSpec, Unsupported
from pipeline.errors import PipelineError

_ORDER = (
    "resnet50_trunc",
    "uni",
    "plip",
    "efficientnet_lite0",
    "uni2_h",
    "virchow2",
    "h_optimus_0",
    "h_optimus_1",
    "gigapath",
    "phikon_v2",
    "midnight",
)
_ALL = {s.name: s for s in (*cnn.specs(), *vit.specs(), *clip.specs(), *dinov2.specs())}
_REGISTRY: dict[str, EncoderSpec] = {name: _ALL[name] for name in _ORDER}
assert set(_ALL) == set(_REGISTRY), "every family entry must be listed in _ORDER"

UNSUPPORTED: dict[str, Unsupported] = {
    u.name: u
    for u in (
        Unsupported(
            name="conch_v15",
            model_id="hf-hub:MahmoodLab/conchv1_5",
            dim=768,
            reason="its image tower is a custom ViT-L/16 with an attentional pooler that neither "
            "timm nor transformers provides; the published loaders execute code from the hub "
            "(trust_remote_code, MahmoodLab/TITAN) or a copy of it, which this pipeline does not do",
        ),
    )
}


def list_encoders() -> list[EncoderSpec]:
    return list(_REGISTRY.values())


def encoder_names() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> EncoderSpec:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in UNSUPPORTED:
        raise PipelineError(
            f"--encoder {name}",
            f"not supported: {UNSUPPORTED[name].reason}",
            f"Choose one of {', '.join(_REGISTRY)}.",
        )
    raise PipelineError(
        f"--encoder {name}",
        "unknown encoder",
        f"Choose one of {', '.join(_REGISTRY)} (`wsi-mil encoders` lists them).",
    )
