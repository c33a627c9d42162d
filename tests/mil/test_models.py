"""Baseline MIL models: registry contract, output shapes, gradients and config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError
from pipeline.mil.models import create_mil_model, list_methods, method_info

torch.set_num_threads(1)
BASELINES = ["abmil", "abmil_gated", "transmil", "dsmil", "msm"]
MHIM = ["mhim_abmil", "mhim_transmil", "mhim_dsmil"]
ALL = BASELINES + MHIM


def ce(target: int):
    return lambda logits: F.cross_entropy(logits, torch.tensor([target]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_shapes_and_gradients(name, n):
    torch.manual_seed(0)
    model = create_mil_model(name, 24, 3, {"hidden_dim": 16})
    x = torch.randn(n, 24)
    loss, out = model.training_loss(x, ce(1), 0.5)
    assert out["logits"].shape == (1, 3)
    assert out["embedding"].shape == (1, 16)
    if "instance_scores" in out:
        assert out["instance_scores"].shape == (n,)
    loss.backward()
    trained = model.student if name in MHIM else model
    grads = [p.grad for p in trained.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    if name in MHIM:  # the teacher is EMA-only; the GRN learns only when something was recycled
        assert all(p.grad is None for p in model.teacher.parameters())
        grn_grads = [p.grad for p in model.grn.parameters()]
        assert all(g is not None for g in grn_grads) == (int(out["n_recycled"]) > 0)


def test_abmil_mi_net_projection():
    model = create_mil_model(
        "abmil", 166, 2, {"embed_dims": "256,128,64", "attention_dim": 64, "activation": "relu"}
    )
    widths = [m.out_features for m in model.projection if isinstance(m, torch.nn.Linear)]
    assert widths == [256, 128, 64]
    assert model.attention.proj.out_features == 64
    assert model(torch.randn(5, 166))["embedding"].shape == (1, 64)


def test_abmil_attention_is_softmax_weighted_mean():
    torch.manual_seed(1)
    model = create_mil_model("abmil", 8, 2, {"hidden_dim": 4, "dropout": 0.0}).eval()
    x = torch.randn(6, 8)
    out = model(x)
    h = model.projection(x)
    a = out["instance_scores"]
    assert torch.allclose(a.sum(), torch.tensor(1.0))
    assert torch.allclose(out["embedding"][0], (a[:, None] * h).sum(0), atol=1e-6)


def test_registry_contract():
    names = [m["name"] for m in list_methods()]
    assert {
        "abmil",
        "abmil_gated",
        "transmil",
        "dsmil",
        "mhim_abmil",
        "mhim_transmil",
        "mhim_dsmil",
        "msm",
    } <= set(names)
    assert method_info("mhim_transmil")["baseline"] == "transmil"
    assert method_info("abmil")["baseline"] is None
    for m in list_methods():
        assert set(m) == {"name", "description", "baseline", "family"} and m["description"]
    with pytest.raises(PipelineError, match="abmil_gated"):
        method_info("ab-mil")


@pytest.mark.parametrize("name", ALL)
def test_unknown_keys_rejected_standard_keys_accepted(name):
    from pipeline.config import section

    full = section(None, "mil")  # every standard key of the mil section is accepted
    create_mil_model(name, 8, 2, full)
    with pytest.raises(PipelineError, match="unknown model key 'hiden_dim'"):
        create_mil_model(name, 8, 2, {"hiden_dim": 3})
    with pytest.raises(PipelineError, match="mil.mhim.ratio"):
        create_mil_model(name, 8, 2, {"mhim": {"ratio": 0.1}})


def planted_bags(n_bags: int = 12, dim: int = 16, seed: int = 0):
    """Bags of N(0, 1) instances; positive bags hide 3 instances shifted by +2 on 4 features."""
    gen = torch.Generator().manual_seed(seed)
    bags, labels = [], []
    for i in range(n_bags):
        x = torch.randn(int(torch.randint(8, 25, (1,), generator=gen)), dim, generator=gen)
        if i % 2:
            x[:3, :4] += 2.0
        bags.append(x)
        labels.append(i % 2)
    return bags, labels


def eval_ce(model, bags, labels) -> float:
    model.eval()
    with torch.no_grad():
        return sum(
            F.cross_entropy(model(x)["logits"], torch.tensor([y])).item()
            for x, y in zip(bags, labels, strict=True)
        ) / len(bags)


def fit(model, bags, labels, epochs: int = 15):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for epoch in range(epochs):
        model.train()
        for x, y in zip(bags, labels, strict=True):
            loss, _ = model.training_loss(x, ce(y), epoch / epochs)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.after_optimizer_step()
    return model


@pytest.mark.parametrize("name", ALL)
def test_fits_a_planted_signal(name):
    torch.manual_seed(0)
    bags, labels = planted_bags()
    cfg = {"hidden_dim": 32}
    model = create_mil_model(name, 16, 2, cfg)
    if model.needs_teacher:  # as the workflow does: the baseline of the same data is the teacher
        baseline = fit(create_mil_model(method_info(name)["baseline"], 16, 2, cfg), bags, labels)
        model.load_teacher(baseline.state_dict())
    before = eval_ce(model, bags, labels)
    after = eval_ce(fit(model, bags, labels), bags, labels)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("sharpness", [1.0, 5.0])
def test_spectral_pinv_equals_the_unrolled_nystrom_iteration(sharpness):
    from pipeline.mil.models.transmil import iterative_pinv, spectral_pinv

    torch.manual_seed(0)  # low-rank landmark logits: a2 is near-singular, as in a real bag
    logits = torch.randn(4, 64, 3, dtype=torch.double) @ torch.randn(4, 3, 64, dtype=torch.double)
    w, g = torch.randn(4, 64, 8, dtype=torch.double), torch.randn(4, 64, 8, dtype=torch.double)
    results = []
    for pinv in (iterative_pinv, spectral_pinv):
        x = (logits * sharpness).requires_grad_()
        z = pinv(x.softmax(-1), 6)
        ((z @ w) * g).sum().backward()
        results.append((z.detach(), x.grad))
    (z1, g1), (z2, g2) = results
    torch.testing.assert_close(z2, z1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g2, g1, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("n", [1, 16, 17, 100])
def test_transmil_cls_only_layer_equals_full_layer(n):
    torch.manual_seed(0)
    model = create_mil_model("transmil", 8, 2, {"hidden_dim": 32, "landmarks": 16})
    attn = model.attn2.double().eval()
    x = torch.randn(n, 32, dtype=torch.double)
    full, cls_row, values = attn(x)
    torch.testing.assert_close(attn(x, cls_only=True)[0], full[:1])
    assert cls_row.shape == (8, n - 1) and values.shape == (8, n - 1, 4)
    if n <= 16:  # exact attention: the CLS row is a probability distribution over all tokens
        assert torch.all(cls_row >= 0) and torch.all(cls_row.sum(1) <= 1 + 1e-12)


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_autocast_trains(name):
    torch.manual_seed(0)
    cfg = {"hidden_dim": 32, **({"landmarks": 8} if "transmil" in name else {})}
    model = create_mil_model(name, 16, 2, cfg)
    x = torch.randn(40, 16)  # longer than the landmarks: the Nystrom path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, out = model.training_loss(
            x, lambda lg: F.cross_entropy(lg.float(), torch.tensor([1]))
        )
    loss.backward()
    model.after_optimizer_step()
    assert torch.isfinite(loss) and out["logits"].shape == (1, 2)
    trained = model.student if name in MHIM else model
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained.parameters())


@pytest.mark.parametrize("p", [0.25, 0.5, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dropout_drops_the_configured_fraction_and_scales_the_rest(p, dtype):
    from pipeline.mil.models.common import Dropout

    torch.manual_seed(0)
    layer = Dropout(p).train()
    x = (torch.rand(1000, 1000) + 0.5).to(dtype).requires_grad_()
    y = layer(x)
    kept = y != 0
    rate = round(p * 256) / 256  # p is rounded to 1/256 (exact for 0.25 and 0.5)
    assert abs(1 - kept.float().mean().item() - rate) < 0.003  # 1e6 draws: sd 0.0004
    mask = kept.to(dtype) * torch.tensor(1 / (1 - rate), dtype=dtype)  # 1/(1-p) in x's dtype
    assert torch.equal(y, x.detach() * mask)  # kept values scaled, the rest zero
    y.sum().backward()
    assert torch.equal(x.grad, mask)  # the gradient goes through the same mask
    assert torch.equal(layer.eval()(x), x)  # identity at inference
    torch.manual_seed(1)
    first = Dropout(p).train()(x)
    torch.manual_seed(1)
    assert torch.equal(first, Dropout(p).train()(x))  # seeded: reproducible masks


def test_bf16_transmil_attention_is_close_to_float32():
    """bf16 autocast runs TransMIL's sequence-length products in bfloat16; the output stays close."""
    torch.manual_seed(0)
    model = create_mil_model("transmil", 64, 2, {"hidden_dim": 64, "landmarks": 16}).eval()
    x = torch.randn(300, 64)
    with torch.no_grad():
        ref = model(x)["logits"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)["logits"].float()
    assert (low - ref).abs().max().item() < 0.05 * max(1.0, ref.abs().max().item())
