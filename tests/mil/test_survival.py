"""Survival task: time bins, the censored NLL by hand, risk, C-index against references, and learning."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.mil import survival as S
from pipeline.mil.data import FeatureBank
from pipeline.mil.splits import make_splits
from pipeline.mil.tasks import SurvivalTask
from pipeline.mil.train import train_fold
from pipeline.settings import mil_settings
from pipeline.stats.metrics import concordance_index

from .conftest import survival_bags


def _sig(v):
    return 1 / (1 + math.exp(-v))


def test_nll_equals_hand_computation_censored_and_uncensored():
    logits = torch.tensor([[0.2, -1.0, 0.5], [1.5, 0.3, -0.7], [-0.4, 0.1, 2.0]])
    bins = torch.tensor([1, 2, 0])
    events = torch.tensor([1.0, 0.0, 1.0])
    h = [[_sig(v) for v in row] for row in logits.tolist()]
    # case 0: event in bin 1 -> survived bin 0, died in bin 1
    l0 = -(math.log(1 - h[0][0]) + math.log(h[0][1]))
    # case 1: censored in bin 2 -> alive at the end of bins 0, 1 and 2
    l1 = -(math.log(1 - h[1][0]) + math.log(1 - h[1][1]) + math.log(1 - h[1][2]))
    # case 2: event in bin 0 -> S_{-1} = 1, died in bin 0
    l2 = -math.log(h[2][0])
    expected = (l0 + l1 + l2) / 3
    assert S.nll_loss(logits, bins, events).item() == pytest.approx(expected, rel=1e-6)
    # alpha re-weights the uncensored part: (1 - a) * L + a * L_uncensored
    a = 0.4
    weighted = ((1 - a) * (l0 + l1 + l2) + a * (l0 + l2)) / 3
    assert S.nll_loss(logits, bins, events, alpha=a).item() == pytest.approx(weighted, rel=1e-6)


def test_risk_is_minus_summed_survival_and_orders_hazards():
    logits = torch.tensor([[-2.0, -2.0], [0.0, 0.0], [2.0, 2.0]])
    risk = S.risk_from_logits(logits)
    h = [_sig(-2.0), _sig(0.0), _sig(2.0)]
    expected = [-((1 - p) + (1 - p) ** 2) for p in h]
    assert risk.tolist() == pytest.approx(expected, rel=1e-6)
    assert risk[0] < risk[1] < risk[2]


def test_quantile_bins_cover_every_time():
    rng = np.random.default_rng(0)
    times = rng.exponential(50, 200)
    events = rng.random(200) < 0.7
    edges = S.quantile_bin_edges(times, events, 4)
    assert len(edges) == 5 and edges[0] == 0 and np.isinf(edges[-1])
    bins = S.assign_bins(times, edges)
    assert bins.min() >= 0 and bins.max() <= 3
    # quantiles of the uncensored times: about a quarter of the events per bin
    counts = np.bincount(bins[events], minlength=4)
    assert np.all(np.abs(counts - events.sum() / 4) <= 1)
    np.testing.assert_allclose(edges[1:-1], np.quantile(times[events], [0.25, 0.5, 0.75]))


def _harrell(times, events, risks):
    """Independent O(n^2) Harrell's C: pair (i, j) comparable when i has the event and T_i < T_j, or
    T_i == T_j and j is censored; concordant when risk_i > risk_j; risk ties count 1/2."""
    num = den = 0.0
    for i in range(len(times)):
        if not events[i]:
            continue
        for j in range(len(times)):
            if i == j:
                continue
            if times[i] < times[j] or (times[i] == times[j] and not events[j]):
                den += 1
                if risks[i] > risks[j]:
                    num += 1
                elif risks[i] == risks[j]:
                    num += 0.5
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c_index_matches_scikit_survival_lifelines_and_hand_count(seed):
    from lifelines.utils import concordance_index as lifelines_c
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(seed)
    n = 120
    times = rng.integers(1, 25, n).astype(float)  # many tied times
    events = rng.random(n) < 0.6  # ~40 % censored
    risks = np.round(rng.normal(size=n) - 0.05 * times, 1)  # tied risks, informative
    ours = concordance_index(times, events, risks)
    assert ours == pytest.approx(concordance_index_censored(events, times, risks)[0], abs=1e-12)
    assert ours == pytest.approx(_harrell(times, events, risks), abs=1e-12)
    # lifelines ranks by predicted survival (higher = longer): pass -risk
    assert ours == pytest.approx(lifelines_c(times, -risks, events), abs=1e-12)


def test_c_index_undefined_is_nan():
    assert math.isnan(concordance_index([1, 2, 3], [0, 0, 0], [0.1, 0.2, 0.3]))


def test_cases_are_bags_and_unmatched_slides_and_cases_are_reported(caplog):
    arrays, surv, slides, _ = survival_bags(n_cases=9, dim=4)
    slides = pd.concat([slides, pd.DataFrame({"slide_id": ["stray"], "case_id": ["nobody"]})])
    arrays["stray"] = np.ones((3, 4), np.float32)
    del arrays["case004_s0"]  # case004 loses its only slide
    task = SurvivalTask(surv, slides, n_bins=4)
    with caplog.at_level("WARNING"):
        wanted = task.wanted_slides()
        bags = task.make_bags(
            FeatureBank.from_arrays({s: arrays[s] for s in wanted if s in arrays})
        )
    text = caplog.text
    assert "slide stray: case nobody has no survival record; left out" in text
    assert "case case004: no slide with features; left out" in text
    assert [b.case_id for b in bags] == [c for c in surv.case_id if c != "case004"]
    two = next(b for b in bags if b.case_id == "case003")
    assert two.slide_ids == ("case003_s0", "case003_s1")
    x = two.features()
    assert x.dtype == torch.float32
    assert x.shape[0] == len(arrays["case003_s0"]) + len(arrays["case003_s1"])
    # the bag is the concatenation of its slides (float16 storage)
    np.testing.assert_allclose(
        x[: len(arrays["case003_s0"])].numpy(),
        arrays["case003_s0"].astype(np.float16).astype(np.float32),
    )


def test_abmil_learns_risk_from_tumour_burden():
    """Synthetic survival cohort: C-index of AB-MIL on the test folds >= 0.65."""
    arrays, surv, slides, burden = survival_bags(n_cases=200, dim=8, seed=0)
    # the planted signal itself: burden ranks the cases well
    assert concordance_index(surv.time, surv.event, burden) > 0.7
    task = SurvivalTask(surv, slides, n_bins=4)
    bank = FeatureBank.from_arrays(arrays)
    bags = task.make_bags(bank)
    strata, val_strata = task.case_strata()
    splits = make_splits(strata, 3, 0, 0.2, val_strata)
    cfg = mil_settings(None, ["epochs=25", "patience=10", "hidden_dim=32", "lr=2e-3"])
    scores = []
    for fold in range(3):
        result = train_fold(task, bags, splits, fold, "abmil", cfg, device="cpu")
        scores.append(result.metrics["test"]["c_index"])
        pred = result.predictions
        assert {"case_id", "slide_ids", "time", "event", "risk", "survival_0"} <= set(pred.columns)
    assert np.mean(scores) >= 0.65, scores
