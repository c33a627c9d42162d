"""Cox partial likelihood against scikit-survival; gradient accumulation = gradient of the mean loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.mil.data import Bag, FeatureBank
from pipeline.mil.epoch import _cox_group, train_epoch
from pipeline.mil.models import create_mil_model
from pipeline.mil.survival_losses import GradientAccumulator, cox_partial_nll
from pipeline.mil.tasks import SurvivalTask


def _tied_data(seed, n=40, d=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    time = rng.integers(1, 8, size=n).astype(float)  # 7 distinct times for 40 cases: many ties
    event = rng.random(n) < 0.6
    event[0] = True
    w = rng.normal(size=d) * 0.5
    return x, time, event, w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cox_partial_nll_equals_scikit_survival_breslow_with_ties(seed):
    from sksurv.linear_model.coxph import CoxPHOptimizer

    x, time, event, w = _tied_data(seed)
    assert len(np.unique(time[event])) < event.sum()  # tied event times present
    ref = CoxPHOptimizer(x, event, time, np.zeros(x.shape[1]), "breslow")
    wt = torch.tensor(w, requires_grad=True)
    risks = torch.tensor(x) @ wt
    ours = cox_partial_nll(risks, torch.tensor(time), torch.tensor(event), "sum") / len(x)
    assert ours.item() == pytest.approx(ref.nlog_likelihood(w), rel=1e-6)
    # the "mean" reduction divides by the number of events instead of cases
    mean = cox_partial_nll(risks, torch.tensor(time), torch.tensor(event))
    assert mean.item() == pytest.approx(ref.nlog_likelihood(w) * len(x) / event.sum(), rel=1e-6)
    # gradient w.r.t. the coefficients = scikit-survival's
    ours.backward()
    ref.update(w)
    assert np.allclose(wt.grad.numpy(), ref.gradient.ravel(), rtol=1e-5, atol=1e-8)


def test_cox_hand_computation_and_no_event_batch():
    r = torch.tensor([0.5, -1.0, 2.0])
    t = torch.tensor([1.0, 1.0, 3.0])
    e = torch.tensor([1.0, 1.0, 0.0])
    # Breslow: both events at t=1 share the risk set {0, 1, 2}
    denom = np.log(np.exp(0.5) + np.exp(-1.0) + np.exp(2.0))
    want = (denom - 0.5) + (denom + 1.0)
    assert float(cox_partial_nll(r, t, e, "sum")) == pytest.approx(want, rel=1e-6)
    assert float(cox_partial_nll(r, t, e)) == pytest.approx(want / 2, rel=1e-6)
    z = cox_partial_nll(r.clone().requires_grad_(), t, torch.zeros(3))
    assert float(z) == 0.0


def _bags(n, dim=6, seed=0, survival=False):
    rng = np.random.default_rng(seed)
    arrays = {f"s{i}": rng.normal(size=(int(rng.integers(5, 15)), dim)) for i in range(n)}
    bank = FeatureBank.from_arrays({k: v.astype(np.float32) for k, v in arrays.items()})
    bags = []
    for i in range(n):
        if survival:
            target = (int(rng.integers(0, 4)), float(rng.integers(1, 6)), int(rng.random() < 0.6))
        else:
            target = i % 2
        bags.append(Bag(f"s{i}", f"s{i}", (f"s{i}",), target, bank))
    return bags


@pytest.mark.parametrize("n, k", [(6, 3), (7, 3), (5, 8)])
def test_accumulation_over_k_cases_equals_the_gradient_of_the_mean_loss(n, k):
    """One accumulated update = one update on the mean loss of the group (partial last group too)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    bags = _bags(n)
    cfg = {"dropout": 0.0, "hidden_dim": 8}
    model = create_mil_model("abmil", 6, 2, cfg)
    ref = create_mil_model("abmil", 6, 2, cfg)
    ref.load_state_dict(model.state_dict())
    seen = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = GradientAccumulator(opt, k, after_step=lambda: seen.append(1))
    acc.begin(n)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for g0 in range(0, n, k):
        group = bags[g0 : g0 + k]
        grads_before = {name: p.detach().clone() for name, p in model.named_parameters()}
        for j, b in enumerate(group):
            y = torch.tensor([b.target])
            stepped = acc.backward(F.cross_entropy(model(b.features())["logits"], y))
            assert stepped == (j == len(group) - 1)
        losses = [
            F.cross_entropy(ref(b.features())["logits"], torch.tensor([b.target])) for b in group
        ]
        ref_opt.zero_grad()
        torch.stack(losses).mean().backward()
        ref_opt.step()
        for name, p in model.named_parameters():
            q = dict(ref.named_parameters())[name]
            assert torch.allclose(p, q, atol=1e-6), name
            assert not torch.equal(p, grads_before[name]) or name.endswith("bias")
    assert len(seen) == acc.steps == -(-n // k)


def test_cox_group_gradient_equals_the_direct_cox_loss_of_model_risks():
    """The marker trick gives the Cox loss of the risks each bag's forward pass produced."""
    from pipeline.mil.survival import risk_from_logits

    torch.manual_seed(0)
    bags = _bags(8, survival=True)
    task = SurvivalTask(None, n_bins=4)
    model = create_mil_model("abmil", 6, 4, {"dropout": 0.0, "hidden_dim": 8}).train()
    loss = _cox_group(model, task, bags, torch.device("cpu"), torch.float32, "fp32", 0.0)
    g = torch.autograd.grad(loss, list(model.parameters()))
    risks = torch.stack([risk_from_logits(model(b.features())["logits"])[0] for b in bags])
    times = torch.tensor([b.target[1] for b in bags])
    events = torch.tensor([float(b.target[2]) for b in bags])
    direct = cox_partial_nll(risks, times, events)
    assert float(loss) == pytest.approx(float(direct), rel=1e-5)
    g2 = torch.autograd.grad(direct, list(model.parameters()))
    for a, b in zip(g, g2, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_cox_epoch_trains_dsmil_and_mhim_and_rejects_single_case_groups():
    from pipeline.errors import PipelineError

    torch.manual_seed(0)
    bags = _bags(10, survival=True)
    task = SurvivalTask(None, n_bins=4)
    small = {"dropout": 0.0, "hidden_dim": 8}
    mhim = create_mil_model("mhim_abmil", 6, 4, small)
    mhim.load_teacher(create_mil_model("abmil", 6, 4, small).state_dict())
    for model in (create_mil_model("dsmil", 6, 4, small), mhim):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        before = [p.detach().clone() for p in model.parameters()]
        loss = train_epoch(model, opt, task, bags, torch.device("cpu"), 4, "cox")
        assert np.isfinite(loss) and loss > 0
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(PipelineError, match="groups of >= 2"):
        train_epoch(model, opt, task, bags, torch.device("cpu"), 1, "cox")


@pytest.mark.parametrize("accumulate, steps_per_epoch", [(1, 10), (3, 4)])
def test_the_trainer_steps_once_per_group_of_accumulate_cases(accumulate, steps_per_epoch):
    """loop.fit with mil.accumulate = k: ceil(n / k) optimiser steps per epoch (k = 1: one per case)."""
    from pipeline.mil.loop import fit
    from pipeline.mil.tasks import ClassificationTask
    from pipeline.settings import MILSettings

    torch.manual_seed(0)
    bags = _bags(10)
    task = ClassificationTask(None)
    settings = MILSettings.from_mapping(
        {"epochs": 2, "patience": 5, "hidden_dim": 8, "dropout": 0.0, "accumulate": accumulate}
    )
    task.configure(settings)
    model = create_mil_model("abmil", 6, 2, settings)
    steps = []
    model.after_optimizer_step = lambda: steps.append(1)
    result = fit(model, task, bags, bags[:4], settings, torch.device("cpu"))
    assert result.epochs_run == 2 and len(steps) == 2 * steps_per_epoch
