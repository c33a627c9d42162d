"""Per-instance score maps: every method gives finite per-patch scores; TransMIL's CLS attention is the
Nystrom formula computed by hand; MHIM gives both the student's attention and the teacher's probability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.mil.models import create_mil_model, list_methods
from pipeline.mil.models.transmil import iterative_pinv
from pipeline.mil.scores import instance_score_maps, score_bag

torch.set_num_threads(1)

SMALL = {"hidden_dim": 32, "dropout": 0.0}
METHOD_SMALL = {
    "transmil": {"heads": 4, "landmarks": 8},
    "mhim_transmil": {"heads": 4, "landmarks": 8},
    "abmil": {"attention_dim": 16},
    "abmil_gated": {"attention_dim": 16},
    "msm": {"attention_dim": 16},
}
EXPECTED = {
    "abmil": {"attention"},
    "abmil_gated": {"attention"},
    "transmil": {"attention", "attention_layer1"},
    "dsmil": {"attention", "instance_logit"},
    "msm": {"attention", "attention_stage0", "attention_stage1", "attention_stage2"},
    "abmil_std": {"attention"},
    "meanpool": {"contribution"},
    "maxpool": {"contribution"},
}


def _model(name: str, n_outputs: int = 1, **extra):
    torch.manual_seed(0)
    cfg = {**SMALL, **METHOD_SMALL.get(name, {}), **extra}
    if name == "msm":
        cfg["msm"] = {"stages": 3, "mask_ratio": 0.2}
    return create_mil_model(name, 12, n_outputs, cfg)


def _bag(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 12, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_outputs", [1, 4])  # binary classification, 4-bin survival
@pytest.mark.parametrize("method", [m["name"] for m in list_methods()])
def test_every_method_scores_every_patch(method, n_outputs):
    model = _model(method, n_outputs)
    model.train()  # the scorer must switch to eval and back
    maps, logits = score_bag(model, _bag(37))
    assert model.training
    assert logits.shape == (n_outputs,)
    base = method.removeprefix("mhim_")
    expected = set(EXPECTED[base])
    if method.startswith("mhim_"):
        expected |= {"instance_prob", "teacher_attention"}
    assert set(maps) == expected
    for name, values in maps.items():
        assert values.shape == (37,), name
        assert values.dtype == np.float32
        assert np.isfinite(values).all(), name
    # eval-mode logits are the model's own prediction
    model.eval()
    with torch.no_grad():
        ref = model(_bag(37))["logits"].reshape(-1).numpy()
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["meanpool", "maxpool"])
def test_reference_contributions_add_up_to_the_logit(method):
    """The mean/max-pool references' instance contributions are exact: they sum to logit - bias."""
    model = _model(method, 1)
    bag = _bag(37)
    model.train()
    for seed in range(3):  # move the running statistics off their start
        model(_bag(37, seed + 1))
    maps, logits = score_bag(model, bag)
    bias = model.classifier.bias.detach().numpy()[0]
    assert maps["contribution"].sum() == pytest.approx(logits[0] - bias, rel=1e-4, abs=1e-5)
    if method == "maxpool":  # only instances holding some feature's maximum contribute
        holders = set(bag.argmax(dim=0).tolist())
        assert {i for i, v in enumerate(maps["contribution"]) if v != 0} <= holders


def test_abmil_attention_is_the_softmax_weights():
    model = _model("abmil").eval()
    x = _bag(25)
    with torch.no_grad():
        h = model.projection(x)
        a = model.attention.score(torch.tanh(model.attention.proj(h))).squeeze(1)
        expected = torch.softmax(a, 0).numpy()
    got = instance_score_maps(model, x)["attention"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert got.sum() == pytest.approx(1.0, abs=1e-5)


def test_msm_combined_attention_is_stage_weighted_sum():
    model = _model("msm").eval()
    x = _bag(30)
    maps = instance_score_maps(model, x)
    with torch.no_grad():
        beta = model.pool(model.embed(x))["stage_weights"].numpy()
    stages = np.stack([maps[f"attention_stage{s}"] for s in range(3)])
    np.testing.assert_allclose(maps["attention"], beta @ stages, rtol=1e-5, atol=1e-7)
    for s in range(3):
        assert maps[f"attention_stage{s}"].sum() == pytest.approx(1.0, abs=1e-5)
    # each later stage gives exactly zero weight to the instances masked before it (ceil(0.2*30)=6 each)
    assert (maps["attention_stage1"] == 0).sum() == 6
    assert (maps["attention_stage2"] == 0).sum() == 12


def test_dsmil_instance_logit_is_the_instance_classifier():
    model = _model("dsmil").eval()
    x = _bag(20)
    with torch.no_grad():
        expected = model.instance_classifier(model.projection(x))[:, 0].numpy()
    np.testing.assert_allclose(instance_score_maps(model, x)["instance_logit"], expected, rtol=1e-5)


def _brute_force_cls_row(attn, tokens: torch.Tensor) -> np.ndarray:
    """The Nystrom CLS row of ``attn`` on its input ``tokens [1 + N, dim]`` (CLS first), written out."""
    n_tok, dim = tokens.shape
    heads, dh, m = attn.heads, attn.dim_head, attn.landmarks
    w = attn.to_qkv.weight.detach().double()
    x = tokens.double()
    q, k = (x @ w[:dim].t()) * dh**-0.5, x @ w[dim : 2 * dim].t()
    q, k = (t.view(n_tok, heads, dh).transpose(0, 1) for t in (q, k))  # [h, n, dh]
    if n_tok <= m:
        row = torch.stack([torch.softmax(q[i, 0] @ k[i].t(), -1) for i in range(heads)])
        return row[:, 1:].mean(0).numpy()
    pad = (-n_tok) % m
    qp, kp = F.pad(q, (0, 0, pad, 0)), F.pad(k, (0, 0, pad, 0))  # zero tokens first
    q_l = qp.view(heads, m, -1, dh).mean(2)
    k_l = kp.view(heads, m, -1, dh).mean(2)
    a1 = torch.softmax(qp[:, pad : pad + 1] @ k_l.transpose(1, 2), -1)  # CLS query [h, 1, m]
    a2 = torch.softmax(q_l @ k_l.transpose(1, 2), -1)
    a3 = torch.softmax(q_l @ kp.transpose(1, 2), -1)
    row = (a1 @ iterative_pinv(a2, attn.pinv_iterations) @ a3)[:, 0]  # [h, pad + n_tok]
    return row[:, pad + 1 :].mean(0).numpy()


@pytest.mark.parametrize("n", [5, 37])  # exact attention (n + 1 <= 8 landmarks) and Nystrom
def test_transmil_cls_attention_is_the_nystrom_formula(n):
    model = _model("transmil").eval()
    seen = {}
    model.attn2.register_forward_pre_hook(lambda mod, args: seen.update(tokens=args[0].detach()))
    maps = instance_score_maps(model, _bag(n))
    raw = _brute_force_cls_row(model.attn2, seen["tokens"])
    assert maps["attention"].shape == (n,)
    assert maps["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(maps["attention"], raw / raw.sum(), rtol=2e-3, atol=1e-6)
    if n >= 8:  # through Nystrom the whole row (instances + CLS + padding) sums to about 1
        assert 0.5 < raw.sum() < 1.5


def test_mhim_stores_student_attention_and_teacher_probability():
    model = _model("mhim_abmil", mhim={"grn": False})
    with torch.no_grad():  # make the teacher differ from the student
        for p in model.teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = _bag(29)
    maps = instance_score_maps(model, x)
    teacher_maps = instance_score_maps(model.teacher, x)
    student_maps = instance_score_maps(model.student, x)
    np.testing.assert_allclose(maps["attention"], student_maps["attention"], rtol=1e-5)
    np.testing.assert_allclose(maps["teacher_attention"], teacher_maps["attention"], rtol=1e-5)
    with torch.no_grad():
        ht = model.teacher.projection(x)
        a = torch.as_tensor(teacher_maps["attention"])
        p = torch.sigmoid(
            (a[:, None] * ht) @ model.teacher.classifier.weight.t() + model.teacher.classifier.bias
        )[:, 0]
    np.testing.assert_allclose(maps["instance_prob"], torch.maximum(p, 1 - p).numpy(), rtol=1e-5)
    assert not np.allclose(maps["attention"], maps["teacher_attention"])
