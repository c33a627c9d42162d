"""MSM-MIL mask stacking: each stage masks its share of new instances and never re-selects one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.mil.models import create_mil_model
from pipeline.mil.msm import stage_masks

torch.set_num_threads(1)


@pytest.mark.parametrize("n", [1, 2, 5, 37, 500])
@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_each_stage_masks_its_top_new_instances(n, ratio):
    torch.manual_seed(n)
    stages = 4
    logits = torch.randn(stages, n)
    masks = stage_masks(logits, ratio)
    assert masks.shape == (stages, n) and not masks[0].any()
    step = math.ceil(round(ratio * n, 9))
    for s in range(stages - 1):
        before, after = masks[s], masks[s + 1]
        assert torch.all(after | ~before)  # once masked, always masked: never re-selected
        new = after & ~before
        left = n - int(before.sum())
        assert int(new.sum()) == min(
            step, left - 1
        )  # at least one instance stays for the next stage
        if new.any():  # the new ones are this stage's most attended among the still available
            available = logits[s].masked_fill(before, float("-inf"))
            assert torch.equal(
                new.nonzero().squeeze(1).sort().values,
                available.topk(int(new.sum())).indices.sort().values,
            )


def test_stages_only_attend_to_unmasked_instances():
    torch.manual_seed(0)
    model = create_mil_model(
        "msm", 6, 2, {"hidden_dim": 8, "dropout": 0.0, "msm": {"stages": 3, "mask_ratio": 0.2}}
    ).eval()
    x = torch.randn(20, 6)
    h = model.embed(x)
    pooled = model.pool(h)
    masks = pooled["stage_masks"]
    assert masks.sum(1).tolist() == [0, 4, 8]
    g = model.gate(h)
    g = torch.tanh(g[:, :128]) * torch.sigmoid(g[:, 128:])
    logits = model.stage_score(g).t()
    for s in range(3):
        w = torch.softmax(logits[s].masked_fill(masks[s], float("-inf")), 0)
        assert torch.all(w[masks[s]] == 0)
        torch.testing.assert_close(pooled["stage_embeddings"][s], w @ h)
    out = model(x)
    torch.testing.assert_close(out["instance_scores"].sum(), torch.tensor(1.0))
    loss, _ = model.training_loss(x, lambda lg: F.cross_entropy(lg, torch.tensor([1])))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
