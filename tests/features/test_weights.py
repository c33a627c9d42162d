"""Weights: the offline ImageNet CNN is really pretrained, local files and a Hugging Face cache load
exactly the tensors they hold, and every way of getting it wrong is one clear error."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from pipeline import fingerprints, weights_hub
from pipeline.encoders import create_encoder, get_spec
from pipeline.errors import PipelineError
from pipeline.weights import read_state_dict

GRACE_HOPPER = Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # ImageNet class of the classic test photo (Grace Hopper in uniform)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fake_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes | Path]) -> Path:
    """A Hugging Face cache entry as `huggingface_hub` lays it out (blobs, snapshots, refs/main)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def imagenet_classifier() -> torch.nn.Module:
    """timm tf_efficientnet_lite0 *with* its ImageNet head, loaded through the project's mapping."""
    spec = get_spec("efficientnet_lite0")
    path = spec.pretrained.locate()
    mapped = spec.convert(read_state_dict([path]), str(path))
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    model.load_state_dict(mapped, strict=False)
    return model.eval()


def photo(size: int = 224) -> np.ndarray:
    image = Image.open(GRACE_HOPPER).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size)))


def test_efficientnet_lite0_is_really_imagenet_pretrained():
    encoder = create_encoder("efficientnet_lite0")
    path = get_spec("efficientnet_lite0").pretrained.locate()
    raw = [
        v
        for k, v in torch.load(path, weights_only=True, map_location="cpu").items()
        if not k.endswith("num_batches_tracked")
    ]
    own = [
        v for k, v in encoder.trunk.state_dict().items() if not k.endswith("num_batches_tracked")
    ]
    assert len(raw) == 247 and len(own) == 245  # the 2 classifier tensors are left out
    assert all(torch.equal(a, b) for a, b in zip(raw, own, strict=False))

    classifier = imagenet_classifier()
    x = encoder.preprocess(torch.from_numpy(photo().copy())[None])
    with torch.inference_mode():
        logits = classifier(x)
        feats = encoder(x)
        pre_logits = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
    assert logits.argmax(1).item() == MILITARY_UNIFORM
    assert logits.softmax(1)[0, MILITARY_UNIFORM] > 0.3
    torch.testing.assert_close(feats, pre_logits)
    random = create_encoder("efficientnet_lite0", "random")
    with torch.inference_mode():
        assert torch.nn.functional.cosine_similarity(random(x), feats).item() < 0.9


def test_lukemelas_mapping_checks_every_shape_in_order():
    spec = get_spec("efficientnet_lite0")
    path = spec.pretrained.locate()
    state = read_state_dict([path])
    state["_blocks.3._project_conv.weight"] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(
        PipelineError, match=r"_blocks\.3\._project_conv\.weight .* does not match timm"
    ):
        spec.convert(state, str(path))
    del state["_blocks.3._project_conv.weight"]
    with pytest.raises(PipelineError, match="246 tensors"):
        spec.convert(state, str(path))


def test_local_safetensors_file_and_torch_checkpoint(tmp_path):
    reference = create_encoder("efficientnet_lite0")
    state = {
        k: v.clone() * 0.5 for k, v in reference.trunk.state_dict().items()
    }  # not the package's
    file = tmp_path / "lite0.safetensors"
    save_file(state, str(file))
    loaded = create_encoder("efficientnet_lite0", str(file))
    assert all(torch.equal(loaded.trunk.state_dict()[k], state[k]) for k in state)
    assert loaded.provenance["weights"] == "file"
    assert loaded.provenance["weights_sha256"] == sha256(file)

    wrapped = tmp_path / "ckpt.pth"  # DataParallel prefix inside a {"state_dict": ...} wrapper
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    from_pth = create_encoder("efficientnet_lite0", str(wrapped))
    assert all(torch.equal(from_pth.trunk.state_dict()[k], state[k]) for k in state)

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(file.read_bytes())
    assert create_encoder("efficientnet_lite0", str(folder)).provenance["weights_sha256"] == sha256(
        file
    )


def test_resnet50_trunc_from_an_offline_hub_cache(offline_hub):
    full = timm.create_model("resnet50", num_classes=1000)  # the hub file holds layer4 and fc too
    state = {k: v.half() for k, v in full.state_dict().items()}
    blob = tmp_file = offline_hub / "r50.safetensors"
    save_file(state, str(tmp_file))
    snapshot = fake_hub_cache(
        offline_hub / "hub", "timm/resnet50.tv_in1k", {"model.safetensors": blob}
    )
    encoder = create_encoder("resnet50_trunc", "pretrained")
    own = encoder.trunk.state_dict()
    assert not any(k.startswith(("layer4.", "fc.")) for k in own)
    assert all(torch.equal(own[k], state[k].float()) for k in own)
    prov = encoder.provenance
    assert prov["weights_source"] == "hf-hub:timm/resnet50.tv_in1k"
    assert prov["weights_sha256"] == sha256(blob)
    assert Path(prov["weights_files"][0]["file"]) == snapshot / "model.safetensors"


def test_plip_from_an_offline_hub_cache_equals_clip_get_image_features(offline_hub, monkeypatch):
    from transformers import CLIPConfig, CLIPModel

    monkeypatch.setenv("HF_HUB_CACHE", str(offline_hub / "elsewhere"))  # HF_HUB_CACHE beats HF_HOME
    config = CLIPConfig(  # a tiny CLIP with PLIP's 512-d projection, written as the hub would
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 2},
        vision_config={"hidden_size": 64, "intermediate_size": 37, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "patch_size": 32, "image_size": 224},
        projection_dim=512,
    )  # fmt: skip
    torch.manual_seed(1)
    clip = CLIPModel(config).eval()
    weights = offline_hub / "plip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    fake_hub_cache(
        offline_hub / "elsewhere",
        "vinid/plip",
        {"config.json": json.dumps(config.to_dict()).encode(), "model.safetensors": weights},
    )
    encoder = create_encoder("plip", "pretrained")
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = clip.get_image_features(pixel_values=x)
        expected = expected if torch.is_tensor(expected) else expected.pooler_output
        got = encoder(x)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got, expected)


def test_missing_weights_path_is_one_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="weights path does not exist") as err:
        create_encoder("efficientnet_lite0", str(tmp_path / "nope.safetensors"))
    assert "\n" not in err.value.line()


def test_checkpoint_of_another_model_is_refused_not_half_loaded(tmp_path):
    lite = create_encoder("efficientnet_lite0").trunk.state_dict()
    state = {k: v.clone() for k, v in lite.items()}
    state["conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    bad_shape = tmp_path / "bad_shape.safetensors"
    save_file(state, str(bad_shape))
    with pytest.raises(PipelineError, match=r"1 shape mismatch.*conv_head\.weight"):
        create_encoder("efficientnet_lite0", str(bad_shape))
    other = tmp_path / "lite0.safetensors"
    save_file(lite, str(other))
    with pytest.raises(PipelineError, match="missing key.*unexpected key"):
        create_encoder("resnet50_trunc", str(other))
    not_weights = tmp_path / "notes.txt"
    not_weights.write_text("hello")
    with pytest.raises(PipelineError, match="not a weights file"):
        create_encoder("efficientnet_lite0", str(not_weights))
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(other.read_bytes()[:1000])
    with pytest.raises(PipelineError, match="cannot read weights"):
        create_encoder("efficientnet_lite0", str(truncated))


def test_uni_offline_and_not_cached_says_how_to_get_access():
    with pytest.raises(PipelineError) as err:
        create_encoder("uni", "pretrained")
    line = err.value.line()
    assert "HF_HUB_OFFLINE=1" in line and "HF_TOKEN" in line and "--weights" in line
    assert "huggingface.co/MahmoodLab/uni" in line


def test_uni_without_token_fails_before_any_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_network)
    with pytest.raises(PipelineError, match="gated model and no Hugging Face token"):
        create_encoder("uni", "pretrained")


def test_uni_token_without_access_is_one_clear_error(monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
    seen = {}

    def gated(repo_id, filename, **kwargs):
        seen["token"] = kwargs.get("token")
        error = GatedRepoError.__new__(GatedRepoError)
        Exception.__init__(error, "Access to model MahmoodLab/uni is restricted")
        raise error

    monkeypatch.setattr("huggingface_hub.hf_hub_download", gated)
    with pytest.raises(PipelineError, match="no access to the gated model") as err:
        create_encoder("uni", "pretrained")
    assert seen["token"] == "hf_not_granted"
    assert "Request access at https://huggingface.co/MahmoodLab/uni" in err.value.line()


def test_hub_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert weights_hub.hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert weights_hub.hub_cache_dir() == tmp_path / "cache"


# --- foundation models from a hub cache, and the fingerprint cache -------------------------------


def small_card_model(name: str):
    """A 1-block model of the entry's architecture, as timm/transformers build it from the card."""
    spec = get_spec(name)
    torch.manual_seed(5)
    depth = {"depth": 1} if spec.recipe["library"] == "timm" else {"num_hidden_layers": 1}
    return spec.build(None, None, **depth).eval(), depth


def test_gated_uni2_h_loads_offline_from_a_local_hub_cache(offline_hub):
    model, depth = small_card_model("uni2_h")
    blob = offline_hub / "uni2.bin"
    torch.save(model.state_dict(), blob)  # UNI2-h publishes pytorch_model.bin
    snapshot = fake_hub_cache(offline_hub / "hub", "MahmoodLab/UNI2-h", {"pytorch_model.bin": blob})
    encoder = create_encoder("uni2_h", "pretrained", **depth)  # HF_HUB_OFFLINE=1, no token
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(encoder(x), model(x), rtol=0, atol=0)
    prov = encoder.provenance
    assert prov["weights_source"] == "hf-hub:MahmoodLab/UNI2-h (gated)"
    assert prov["weights_sha256"] == sha256(blob)
    assert Path(prov["weights_files"][0]["file"]) == snapshot / "pytorch_model.bin"


def test_gated_entry_without_access_is_one_line_naming_the_page(monkeypatch):
    with pytest.raises(PipelineError) as err:  # offline and not cached
        create_encoder("virchow2", "pretrained")
    line = err.value.line()
    assert "\n" not in line and "huggingface.co/paige-ai/Virchow2" in line and "HF_TOKEN" in line
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")

    def gated(repo_id, filename, **kwargs):
        error = GatedRepoError.__new__(GatedRepoError)
        Exception.__init__(error, f"Access to model {repo_id} is restricted")
        raise error

    monkeypatch.setattr("huggingface_hub.hf_hub_download", gated)
    with pytest.raises(PipelineError, match="no access to the gated model") as err:
        create_encoder("h_optimus_1", "pretrained")
    assert "\n" not in err.value.line() and "bioptimus/H-optimus-1" in err.value.line()


def test_dinov2_config_json_must_agree_with_the_recipe(offline_hub):
    model, depth = small_card_model("phikon_v2")
    weights = offline_hub / "phikon.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    config = {**model.config.to_dict(), "num_hidden_layers": 1}
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": weights}
    fake_hub_cache(offline_hub / "hub", "owkin/phikon-v2", files)
    encoder = create_encoder("phikon_v2", "pretrained", **depth)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(encoder(x), model(pixel_values=x).last_hidden_state[:, 0])
    folder = offline_hub / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-12}))
    (folder / "model.safetensors").write_bytes(weights.read_bytes())
    with pytest.raises(PipelineError, match=r"layer_norm_eps=1e-12 \(registry: 1e-06\)"):
        create_encoder("phikon_v2", str(folder), **depth)


def test_fingerprint_is_computed_once_per_file_size_and_mtime(tmp_path, monkeypatch, offline_hub):
    calls = []
    real = fingerprints.sha256_file
    monkeypatch.setattr(fingerprints, "sha256_file", lambda p: calls.append(p) or real(p))
    state = create_encoder("efficientnet_lite0").trunk.state_dict()
    calls.clear()  # the package's own file was hashed once above
    file = tmp_path / "lite0.safetensors"
    save_file(state, str(file))
    first = create_encoder("efficientnet_lite0", str(file)).provenance["weights_sha256"]
    again = create_encoder("efficientnet_lite0", str(file)).provenance["weights_sha256"]
    assert first == again == sha256(file) and len(calls) == 1
    cache = json.loads(fingerprints.fingerprint_cache_path().read_text())
    assert fingerprints.fingerprint_cache_path().parent.parent == offline_hub  # under HF_HOME
    assert cache[str(file.resolve())]["sha256"] == first

    changed = {k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}
    save_file(changed, str(file))  # same size, new content and mtime
    os.utime(file, ns=(1, 10**18))
    second = create_encoder("efficientnet_lite0", str(file)).provenance["weights_sha256"]
    assert second == sha256(file) != first and len(calls) == 2
    monkeypatch.setenv("WSI_MIL_FINGERPRINT_CACHE", str(tmp_path / "elsewhere.json"))
    create_encoder("efficientnet_lite0", str(file))
    assert len(calls) == 3 and (tmp_path / "elsewhere.json").is_file()


def test_weights_are_assigned_not_copied_into_a_random_init(tmp_path, monkeypatch):
    """With a checkpoint no parameter is ever initialised on the CPU: the trunk's tensors are the
    file's (cast to float32), built on the meta device first."""
    inits = []
    real = torch.nn.init.trunc_normal_
    monkeypatch.setattr(
        torch.nn.init,
        "trunc_normal_",
        lambda t, *a, **k: inits.append(t.device.type) or real(t, *a, **k),
    )
    model, depth = small_card_model("virchow2")
    inits.clear()
    file = tmp_path / "v2.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(file))
    encoder = create_encoder("virchow2", str(file), **depth)
    assert set(inits) <= {"meta"}
    own = encoder.trunk.state_dict()
    assert all(v.dtype == torch.float32 and not v.is_meta for v in own.values())
    assert all(torch.equal(own[k], v.half().float()) for k, v in model.state_dict().items())
