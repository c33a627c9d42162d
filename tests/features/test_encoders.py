"""Pathology foundation models: each registry entry is its model card, checked without real weights.

The model cards' recipes are written out here independently of ``pipeline/encoders`` (timm kwargs,
transformers configs, torchvision transforms, token rules as the cards print them). Large models are
compared on the meta device (architecture, parameter counts) and run at reduced depth (same code
path, same embedding rule) so the file stays fast; one model per family runs at full size.
"""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as T
from transformers import Dinov2Config, Dinov2Model

import pipeline.encoders as encoders_module
from pipeline.encoders import create_encoder, get_spec, list_encoders
from pipeline.encoders.model import parameters_on_meta
from pipeline.errors import PipelineError
from pipeline.extract_group import run_extraction
from pipeline.features import ExtractOptions
from pipeline.store import open_store

SwiGLU, SiLU = timm.layers.SwiGLUPacked, torch.nn.SiLU
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
BICUBIC, BILINEAR = T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR


def vit_cls(model, x):
    return model(x)


def virchow2_embedding(model, x):  # Virchow2 card: tokens 1-4 are registers
    output = model(x)
    return torch.cat([output[:, 0], output[:, 5:].mean(1)], dim=-1)


def dinov2_cls(model, x):
    return model(pixel_values=x).last_hidden_state[:, 0, :]


def midnight_embedding(model, x):  # Midnight card: extract_classification_embedding
    tensor = model(pixel_values=x).last_hidden_state
    return torch.cat([tensor[:, 0, :], tensor[:, 1:, :].mean(1)], dim=-1)


def compose(resize, crop, interpolation, norm):
    steps = [T.Resize(resize, interpolation=interpolation)] if resize else []
    steps += [T.CenterCrop(crop)] if crop else []
    return T.Compose([*steps, T.ToTensor(), T.Normalize(*norm)])


H_OPTIMUS_CARD = (
    "timm",
    "hf-hub arch vit_giant_patch14_reg4_dinov2",
    ("vit_giant_patch14_reg4_dinov2", dict(img_size=224, init_values=1e-5, dynamic_img_size=False)),
    vit_cls,
    compose(None, None, None, HOPTIMUS),  # the card: ToTensor + Normalize on 224-px tiles
)
# name: (library, note, (architecture, kwargs) | Dinov2Config kwargs, embedding, transform, published)
CARDS = {
    "uni2_h": (
        "timm",
        "MahmoodLab/UNI README",
        (
            "vit_giant_patch14_224",
            dict(
                img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
                embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True,
                mlp_layer=SwiGLU, act_layer=SiLU, reg_tokens=8, dynamic_img_size=True,
            ),
        ),
        vit_cls,
        compose(224, 224, BILINEAR, IMAGENET),
    ),
    "virchow2": (
        "timm",
        "paige-ai/Virchow2 config.json + card",
        (
            "vit_huge_patch14_224",
            dict(
                img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375,
                global_pool="", dynamic_img_size=True, mlp_layer=SwiGLU, act_layer=SiLU,
            ),
        ),
        virchow2_embedding,
        compose(224, 224, BICUBIC, IMAGENET),  # timm resolve_data_config: bicubic, crop_pct 1
    ),
    "h_optimus_0": H_OPTIMUS_CARD,
    "h_optimus_1": H_OPTIMUS_CARD,
    "gigapath": (
        "timm",
        "prov-gigapath config.json + card transform",
        (
            "vit_giant_patch14_dinov2",
            dict(
                img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24,
                init_values=1e-5, mlp_ratio=5.33334, num_classes=0,
            ),
        ),
        vit_cls,
        compose(256, 224, BICUBIC, IMAGENET),
    ),
    "phikon_v2": (
        "transformers",
        "owkin/phikon-v2 (DINOv2 ViT-L/16)",
        dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=16,
            image_size=224, mlp_ratio=4, use_swiglu_ffn=False, layer_norm_eps=1e-6,
        ),
        dinov2_cls,
        compose(224, 224, BICUBIC, IMAGENET),
    ),
    "midnight": (
        "transformers",
        "kaiko-ai/midnight (DINOv2 ViT-g/14)",
        dict(
            hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, patch_size=14,
            image_size=224, mlp_ratio=4, use_swiglu_ffn=True, layer_norm_eps=1e-6,
        ),
        midnight_embedding,
        compose(224, 224, BILINEAR, ((0.5,) * 3, (0.5,) * 3)),
    ),
}  # fmt: skip
PUBLISHED = {  # parameter counts as published (source in each spec's params_source)
    "uni2_h": 681e6,
    "virchow2": 632e6,
    "h_optimus_0": 1.13e9,
    "h_optimus_1": 1.13e9,
    "gigapath": 1.13e9,
    "phikon_v2": 303e6,
    "midnight": 1.14e9,
}
DIMS = {
    "uni2_h": 1536,
    "virchow2": 2560,
    "h_optimus_0": 1536,
    "h_optimus_1": 1536,
    "gigapath": 1536,
    "phikon_v2": 1024,
    "midnight": 3072,
}
NEW = list(CARDS)


def card_model(name: str, depth: int | None = None):
    library, _, recipe, _, _ = CARDS[name]
    if library == "timm":
        arch, kwargs = recipe
        return timm.create_model(arch, pretrained=False, **{**kwargs, **small(name, depth)})
    return Dinov2Model(Dinov2Config(**{**recipe, **small(name, depth)}))


def small(name: str, depth: int | None) -> dict:
    if depth is None:
        return {}
    return {"depth": depth} if CARDS[name][0] == "timm" else {"num_hidden_layers": depth}


def test_the_new_entries_are_registered_with_their_published_dims():
    names = [s.name for s in list_encoders()]
    assert set(NEW) <= set(names)
    for name in NEW:
        spec = get_spec(name)
        assert spec.dim == DIMS[name] and spec.input_size == 224 and spec.mpp == 0.5
    with pytest.raises(PipelineError, match="not supported: .*trust_remote_code") as err:
        get_spec("conch_v15")
    assert "\n" not in err.value.line()


@pytest.mark.parametrize("name", NEW)
def test_architecture_and_size_equal_the_card_on_the_meta_device(name):
    spec = get_spec(name)
    with torch.device("meta"):
        card = card_model(name)
    with parameters_on_meta():
        ours = spec.build(None, None)
    card_state, our_state = card.state_dict(), ours.state_dict()
    assert list(card_state) == list(our_state)
    assert all(card_state[k].shape == our_state[k].shape for k in card_state)
    assert repr(card) == repr(ours)  # layer types, activations, norms, eps
    if CARDS[name][0] == "timm":
        for attr in ("global_pool", "num_prefix_tokens", "num_reg_tokens", "no_embed_class"):
            assert getattr(card, attr) == getattr(ours, attr), attr
        assert card.dynamic_img_size == ours.dynamic_img_size
    else:
        from pipeline.encoders.dinov2 import COMPUTE_FIELDS

        for field in (*COMPUTE_FIELDS, "image_size"):
            assert getattr(card.config, field) == getattr(ours.config, field), field
    count = sum(p.numel() for p in ours.parameters())
    assert abs(count - PUBLISHED[name]) <= 0.01 * PUBLISHED[name], count
    assert abs(spec.params - PUBLISHED[name]) <= 0.01 * PUBLISHED[name]


@pytest.mark.parametrize("name", NEW)
def test_registry_model_equals_the_card_model_given_the_same_weights(name, tmp_path):
    """Reduced depth keeps it fast; every other argument and the token rule are the card's."""
    torch.manual_seed(3)
    card = card_model(name, depth=2).eval()
    file = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in card.state_dict().items()}, str(file))
    ours = create_encoder(name, str(file), **small(name, 2))
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = CARDS[name][3](card, x)
        got = ours(x)
    assert got.shape == (2, DIMS[name])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not any(p.is_meta for p in ours.parameters())
    assert ours.provenance["weights"] == "file" and len(ours.provenance["weights_sha256"]) == 64


def read_patch(slide_path, x, y, size) -> np.ndarray:
    with openslide.OpenSlide(str(slide_path)) as slide:
        return np.asarray(slide.read_region((x, y), 0, (size, size)).convert("RGB"))


@pytest.mark.parametrize("size", [224, 256])
@pytest.mark.parametrize("name", NEW)
def test_preprocessing_equals_the_card_transform(name, size, cmu):
    spec = get_spec(name)
    patch = read_patch(cmu, 1024, 1024, size)  # CMU-1-Small-Region level 0 ≈ 0.5 µm/px
    card = CARDS[name][4]
    if size != 224 and name.startswith("h_optimus"):  # the card feeds 224-px tiles only
        card = compose(224, 224, BILINEAR, HOPTIMUS)
    expected = card(Image.fromarray(patch))
    encoder = encoders_module.model.Encoder(spec, torch.nn.Identity(), {})
    uint8 = torch.from_numpy(patch.copy())
    got = encoder.preprocess(uint8[None])[0]
    assert got.shape == expected.shape == (3, 224, 224)
    level = 1 / 255 / min(spec.std)  # one grey level after normalisation
    if spec.resize_to == size:  # no resampling: the same numbers
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        return
    # torchvision's tensor path of the same transform rounds to uint8 after resizing: ≤ ½ level
    tensor_path = T.Compose(
        [*card.transforms[:-2], T.ConvertImageDtype(torch.float32), card.transforms[-1]]
    )
    on_tensor = tensor_path(uint8.permute(2, 0, 1).contiguous())
    assert (got - on_tensor).abs().max() <= 0.51 * level
    # PIL's two-pass uint8 resampling (what the card runs on a PIL image) differs slightly more
    # at sharp edges, never on average
    diff = (got - expected).abs()
    assert diff.mean() <= 0.5 * level, diff.mean() / level
    assert diff.max() <= (8 if spec.interpolation == "bicubic" else 2.5) * level, diff.max() / level


def extract(tmp_path, tile_store, cmu, name, coords, monkeypatch, depth=None):
    if depth is not None:
        real = encoders_module.model.create_encoder
        monkeypatch.setattr(
            encoders_module,
            "create_encoder",
            lambda n, w="pretrained": real(n, w, **small(n, depth)),
            raising=False,
        )
    tiles = tile_store(tmp_path / "tiles.zarr", cmu, coords)
    out = tmp_path / f"{name}.zarr"
    run_extraction(cmu, tiles, out, name, "random", ExtractOptions(2, 0, "cpu"))
    group = open_store(out)
    return np.asarray(group["features"][...]), np.asarray(group["coords"][...]), dict(group.attrs)


@pytest.mark.parametrize("name", NEW)
def test_every_entry_extracts_n_by_dim_with_its_provenance(
    name, tmp_path, tile_store, cmu, monkeypatch
):
    coords = [(1024, 1024), (256, 1536)]
    feats, stored, attrs = extract(tmp_path, tile_store, cmu, name, coords, monkeypatch, depth=1)
    assert feats.shape == (2, DIMS[name]) and feats.dtype == np.float16
    assert np.isfinite(feats).all() and feats.std() > 0
    np.testing.assert_array_equal(stored, coords)
    spec = get_spec(name)
    assert attrs["model_id"] == spec.model_id and attrs["trained_mpp"] == 0.5
    assert attrs["mean"] == list(spec.mean) and attrs["std"] == list(spec.std)
    assert attrs["input_size"] == 224 and attrs["embedding"] == spec.embedding
    assert attrs["preprocess"]["resize_shorter_side"] == spec.resize_to
    assert attrs["architecture"]["library"] == CARDS[name][0]
    assert attrs["weights"] == "random" and attrs["weights_sha256"] is None


@pytest.mark.parametrize("name", ["virchow2", "phikon_v2"])  # one full-size model per family
def test_full_size_forward_once_per_family(name):
    spec = get_spec(name)
    with parameters_on_meta():
        trunk = spec.build(None, None)
    trunk = trunk.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trunk.parameters():  # cheap stand-in for an init; the values do not matter
            p.uniform_(-0.02, 0.02, generator=generator)
    encoder = encoders_module.model.Encoder(spec, trunk, {}).eval()
    patch = torch.randint(0, 256, (1, 256, 256, 3), dtype=torch.uint8)
    with torch.inference_mode():
        out = encoder(encoder.preprocess(patch))
    assert out.shape == (1, spec.dim) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_mpp_warning_names_both_resolutions():
    spec = get_spec("uni2_h")
    assert spec.mpp_warning(0.5) is None and spec.mpp_warning(0.52) is None
    line = spec.mpp_warning(1.0)
    assert "0.5 µm/px" in line and "1 µm/px" in line and "\n" not in line
    assert get_spec("resnet50_trunc").mpp_warning(2.0) is None  # natural images: no claim


def test_schema_and_check_config_know_every_encoder(tmp_path):
    from pipeline.config import config_errors, load_schema

    schema = load_schema()["properties"]["features"]["properties"]
    assert schema["encoders"]["items"]["enum"] == [s.name for s in list_encoders()]
    base = {"tasks": [{"name": "t", "type": "classification", "table": "t.csv"}]}
    ok = {**base, "features": {"encoders": NEW, "weights": {"virchow2": "random"}}}
    assert config_errors(ok) == []
    bad = {**base, "features": {"encoders": ["conch_v15"]}}
    (line,) = config_errors(bad)
    assert "conch_v15" in line and "virchow2" in line


def test_listing_shows_licence_gating_and_the_unsupported_model(capsys):
    from pipeline.cli import main

    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for name in NEW:
        row = next(r for r in out.splitlines() if r.startswith(name + " "))
        spec = get_spec(name)
        assert str(spec.dim) in row and spec.licence in row and spec.pretrained.describe() in row
    assert "(gated)" in next(r for r in out.splitlines() if r.startswith("virchow2 "))
    assert "conch_v15" in out and "trust_remote_code" in out


def test_listing_and_config_checks_import_neither_torch_nor_timm():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "main(['encoders', '--names'])\n"
        "from pipeline.encoders import get_spec; get_spec('midnight').store_attrs()\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [s.name for s in list_encoders()]
