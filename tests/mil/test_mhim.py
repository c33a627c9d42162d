"""MHIM-MIL mechanics: mask counts along the decay, EMA formulas, consistency loss, inference path,
teacher loading and the class-aware instance probability, each checked against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError
from pipeline.mil.mhim import (
    GlobalRecycleNetwork,
    consistency_loss,
    mask_counts,
    mhim_masks,
    rhsm_ratio_at,
)
from pipeline.mil.models import create_mil_model

torch.set_num_threads(1)


def ce(target: int):
    return lambda logits: F.cross_entropy(logits, torch.tensor([target]))


def mhim_cfg(**mhim):
    return {"hidden_dim": 16, "dropout": 0.0, "mhim": mhim}


@pytest.mark.parametrize("progress", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("n", [1, 2, 9, 100, 2900])
def test_mask_sizes_follow_ratios_along_cosine_decay(n, progress):
    beta0, masked_fraction = 0.05, 0.8
    beta = beta0 * (1 + math.cos(math.pi * progress)) / 2  # paper: cosine decay to 0
    assert rhsm_ratio_at(beta0, progress, decay=True) == pytest.approx(beta)
    scores = torch.randn(n)
    split = mhim_masks(scores, beta, masked_fraction, torch.Generator().manual_seed(n))
    # RHSM: top 2*beta*N candidates, a random half masked (never the whole bag)
    candidates = math.ceil(round(2 * beta * n, 9))
    n_hard = min(n - 1, math.ceil(round(candidates / 2, 9)))
    assert split.hard.numel() == n_hard
    if n_hard:
        top = set(torch.topk(scores, candidates).indices.tolist())
        assert set(split.hard.tolist()) <= top
    # random masking: 80 % of the rest masked, the kept 20 % (at least one) stay in input order
    rest = n - n_hard
    assert split.keep.numel() == max(1, math.floor(round(0.2 * rest, 9)))
    assert split.recycled.numel() == rest - split.keep.numel()
    assert torch.equal(split.keep, split.keep.sort().values)
    every = torch.cat([split.keep, split.recycled, split.hard]).sort().values
    assert torch.equal(every, torch.arange(n))  # a partition of the bag
    assert mask_counts(n, beta, masked_fraction) == (
        candidates if beta > 0 else 0,
        n_hard,
        split.recycled.numel(),
        split.keep.numel(),
    )


def test_mask_counts_by_hand():
    # 100 instances, beta = 0.03: 6 candidates, 3 masked; 97 left, floor(0.2 * 97) = 19 kept, 78 recycled
    assert mask_counts(100, 0.03, 0.8) == (6, 3, 78, 19)
    # end of the decay: no hard masking; ratio 0 disables random masking
    assert mask_counts(100, rhsm_ratio_at(0.03, 1.0, True), 0.8) == (0, 0, 80, 20)
    assert mask_counts(100, 0.03, 0.0) == (6, 3, 0, 97)
    assert rhsm_ratio_at(0.03, 0.9, decay=False) == 0.03


def test_rhsm_masks_a_random_half_of_the_candidates():
    scores = torch.arange(100.0)  # candidates are instances 90..99 for beta = 0.05
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(100)
    for _ in range(400):
        hits[mhim_masks(scores, 0.05, 0.0, gen).hard] += 1
    assert hits[:90].sum() == 0
    assert torch.all((hits[90:] / 400 - 0.5).abs() < 0.12)  # each candidate masked ~half the time


def test_training_loss_uses_the_configured_masks():
    model = create_mil_model("mhim_abmil", 12, 2, mhim_cfg(rhsm_ratio=0.05, random_mask_ratio=0.7))
    _, out = model.training_loss(torch.randn(200, 12), ce(1), progress=0.0)
    # 20 candidates, 10 hard; 190 left: floor(0.3 * 190) = 57 kept, 133 recycled into the GRN
    assert (int(out["n_hard_masked"]), int(out["n_kept"]), int(out["n_recycled"])) == (10, 57, 133)
    _, out = model.training_loss(torch.randn(200, 12), ce(1), progress=1.0)
    assert (int(out["n_hard_masked"]), int(out["n_kept"])) == (0, 60)


def test_teacher_and_query_ema_follow_the_formula():
    lam, lam_q = 0.9, 0.8
    model = create_mil_model(
        "mhim_abmil", 10, 2, mhim_cfg(teacher_momentum=lam, grn_momentum=lam_q, grn_queries=3)
    )
    with torch.no_grad():
        for p in model.student.parameters():
            p.normal_()
    teacher0 = [p.clone() for p in model.teacher.parameters()]
    student = [p.detach().clone() for p in model.student.parameters()]
    queries0 = model.grn.queries.clone()
    loss, _ = model.training_loss(torch.randn(50, 10), ce(0), 0.3)
    z = model._pending_queries.clone()  # the GRN output of this bag
    model.after_optimizer_step()
    for t0, s, t1 in zip(teacher0, student, model.teacher.parameters(), strict=True):
        torch.testing.assert_close(t1, lam * t0 + (1 - lam) * s)
    torch.testing.assert_close(model.grn.queries, lam_q * queries0 + (1 - lam_q) * z)
    assert z.shape == (3, 16)


def test_grn_is_multihead_cross_attention_of_the_queries():
    torch.manual_seed(0)
    grn = GlobalRecycleNetwork(16, queries=2, heads=8).eval()
    h = torch.randn(7, 16)
    norm = grn.norm
    q = grn.to_q(norm(grn.queries)).view(2, 8, 2)
    k, v = grn.to_kv(norm(h)).view(7, 2, 8, 2).unbind(1)
    out = torch.zeros(2, 8, 2)
    for head in range(8):
        a = torch.softmax(q[:, head] @ k[:, head].t() / math.sqrt(2), dim=1)
        out[:, head] = a @ v[:, head]
    expected = grn.to_out(out.reshape(2, 16))
    torch.testing.assert_close(grn(h), expected)


def test_consistency_loss_by_hand():
    s = torch.tensor([[0.2, -1.0, 0.5]])
    t = torch.tensor([[0.1, 0.3, -0.2]])
    tau = 0.1
    pt = [math.exp(v / tau) for v in t[0].tolist()]
    pt = [v / sum(pt) for v in pt]
    log_z = math.log(sum(math.exp(v) for v in s[0].tolist()))
    expected = -sum(p * (v - log_z) for p, v in zip(pt, s[0].tolist(), strict=True))
    assert consistency_loss(s, t, tau).item() == pytest.approx(expected, rel=1e-6)


def test_total_loss_is_task_plus_weighted_consistency():
    alpha, tau = 0.5, 0.1
    cfg = mhim_cfg(
        rhsm_ratio=0.0, random_mask_ratio=0.0, grn=False, consistency_weight=alpha, temperature=tau
    )
    model = create_mil_model("mhim_abmil", 8, 2, cfg)
    x = torch.randn(30, 8)
    loss, out = model.training_loss(x, ce(1), 0.5)
    emb = model.student.eval()(x)["embedding"]  # teacher = student copy, no masking, no dropout
    expected = F.cross_entropy(out["logits"], torch.tensor([1])) + alpha * consistency_loss(
        emb, emb, tau
    )
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("name", ["mhim_abmil", "mhim_transmil", "mhim_dsmil"])
def test_inference_is_student_only_without_masking(name):
    torch.manual_seed(0)
    model = create_mil_model(name, 8, 2, {"hidden_dim": 16})
    x = torch.randn(40, 8)
    model.training_loss(x, ce(1), 0.0)[0].backward()
    model.eval()
    first = model(x)["logits"]
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(torch.randn_like(p))  # teacher weights must not matter
    second = model(x)["logits"]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    h = model.student.embed(x)  # every instance + the GRN tokens of the whole bag
    expected = model.student.classify(model.student.pool(torch.cat([h, model.grn(h)])))
    torch.testing.assert_close(first, expected)
    model.grn_at_inference = False
    torch.testing.assert_close(model(x)["logits"], model.student(x)["logits"])


def test_teacher_is_skipped_when_nothing_needs_it():
    model = create_mil_model("mhim_abmil", 8, 2, mhim_cfg(rhsm_ratio=0.0, consistency_weight=0.0))

    def boom(*args):
        raise AssertionError("teacher ran")

    model.teacher.embed = boom
    loss, _ = model.training_loss(torch.randn(20, 8), ce(0), 0.1)
    assert torch.isfinite(loss)


def test_load_teacher_checks_keys_and_shapes():
    cfg = {"hidden_dim": 16, "mhim": {"init_student_from_baseline": True}}
    model = create_mil_model("mhim_abmil", 8, 2, cfg)
    baseline = create_mil_model("abmil", 8, 2, {"hidden_dim": 16}).state_dict()
    classifier_before = model.student.classifier.weight.clone()
    model.load_teacher(baseline)
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, baseline[k])
    assert torch.equal(model.student.projection[0].weight, baseline["projection.0.weight"])
    assert torch.equal(model.student.classifier.weight, classifier_before)

    missing = {k: v for k, v in baseline.items() if not k.startswith("attention")}
    with pytest.raises(PipelineError, match=r"4 missing key\(s\), e.g. attention"):
        model.load_teacher(missing, source="fold0/abmil/model.pt")
    wide = create_mil_model("abmil", 8, 2, {"hidden_dim": 32}).state_dict()
    with pytest.raises(
        PipelineError, match=r"fold0/abmil/model.pt.*shape mismatch\(es\), e.g. projection.0.weight"
    ):
        model.load_teacher(wide, source="fold0/abmil/model.pt")
    other = create_mil_model("transmil", 8, 2, {"hidden_dim": 16}).state_dict()
    with pytest.raises(PipelineError, match=r"unexpected key\(s\)"):
        model.load_teacher(other)


def test_class_aware_probability_abmil_by_hand():
    torch.manual_seed(0)
    model = create_mil_model(
        "mhim_abmil", 4, 3, {"hidden_dim": 4, "dropout": 0.0, "mhim": {"grn": False}}
    )
    t = model.teacher.eval()
    x = torch.randn(5, 4)
    h = t.embed(x)
    pooled = t.pool(h)
    raw = t.attention.score(torch.tanh(t.attention.proj(h))).squeeze(1)
    a = torch.softmax(raw, 0)
    expected = torch.stack([torch.softmax(t.classifier(a[i] * h[i]), 0).max() for i in range(5)])
    torch.testing.assert_close(t.instance_scores(h, pooled, "class_aware"), expected)
    torch.testing.assert_close(t.instance_scores(h, pooled, "attention"), a)  # MHIM v1


def test_class_aware_probability_transmil_by_hand():
    torch.manual_seed(0)
    model = create_mil_model("transmil", 6, 2, {"hidden_dim": 16, "dropout": 0.0}).eval()
    x = torch.randn(5, 6)
    h = model.embed(x)
    pooled = model.pool(h)
    tokens = model.norm1(torch.cat([model.cls_token, h]))
    qkv = model.attn1.to_qkv(tokens).view(6, 3, 8, 2)
    contrib = torch.zeros(5, 16)
    for head in range(8):  # exact attention: the bag is shorter than the landmarks
        q, k, v = qkv[:, 0, head], qkv[:, 1, head], qkv[:, 2, head]
        a = torch.softmax(q[0] @ k.t() / math.sqrt(2), 0)[1:]
        contrib[:, head * 2 : head * 2 + 2] = a[:, None] * v[1:]
    expected = torch.softmax(model.classifier(model.attn1.to_out(contrib)), 1).amax(1)
    torch.testing.assert_close(model.instance_scores(h, pooled, "class_aware"), expected)


def test_class_aware_probability_dsmil_is_its_instance_classifier():
    model = create_mil_model("dsmil", 6, 3, {"hidden_dim": 8, "dropout": 0.0}).eval()
    h = model.embed(torch.randn(9, 6))
    expected = torch.softmax(model.instance_classifier(h), 1).amax(1)
    torch.testing.assert_close(model.instance_scores(h, model.pool(h), "class_aware"), expected)


def test_v1_masks_the_most_attended_instances():
    model = create_mil_model(
        "mhim_abmil",
        6,
        2,
        mhim_cfg(instance_score="attention", rhsm_ratio=0.1, random_mask_ratio=0.0),
    )
    x = torch.randn(40, 6)
    t = model.teacher
    attn = t.pool(t.embed(x))["attention"]
    top8 = set(torch.topk(attn, 8).indices.tolist())
    split = mhim_masks(attn, 0.1, 0.0)
    assert len(split.hard) == 4 and set(split.hard.tolist()) <= top8


def test_invalid_mhim_settings_are_rejected():
    with pytest.raises(PipelineError, match="instance_score"):
        create_mil_model("mhim_abmil", 4, 2, {"mhim": {"instance_score": "cam"}})
    with pytest.raises(PipelineError, match="random_mask_ratio"):
        create_mil_model("mhim_abmil", 4, 2, {"mhim": {"random_mask_ratio": 1.0}})
