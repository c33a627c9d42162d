"""Mean-/max-pool reference methods: registered, the MILModel contract, the expected arithmetic."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.mil.models import create_mil_model, list_methods, method_info


@pytest.mark.parametrize("name, reduce", [("meanpool", "mean"), ("maxpool", "amax")])
def test_pool_then_standardise_then_linear(name, reduce):
    torch.manual_seed(0)
    model = create_mil_model(name, 5, 3, {})
    assert not model.classifier.weight.any() and not model.classifier.bias.any()  # starts at 0
    torch.nn.init.normal_(model.classifier.weight)  # non-zero weights check the arithmetic below
    torch.nn.init.normal_(model.classifier.bias)
    assert method_info(name)["family"] == "reference" and name in [
        m["name"] for m in list_methods()
    ]
    x = torch.randn(17, 5)
    model.train()
    out = model(x)  # the first training bag sets the running mean: its standardised embedding is 0
    assert torch.allclose(out["embedding"], torch.zeros(1, 5), atol=1e-6)
    model.eval()
    y = torch.randn(9, 5) + 1.0
    out = model(y)
    s = model.standardize
    assert torch.equal(s.scale(), torch.ones(5))  # one bag: no spread yet, centring only
    z = getattr(y, reduce)(0) - s.mean
    want = z @ model.classifier.weight.t() + model.classifier.bias
    assert out["logits"].shape == (1, 3)
    assert torch.allclose(out["logits"][0], want, atol=1e-5)
    model.train()
    for _ in range(3):
        model(torch.randn(11, 5))
    model.eval()
    z = (getattr(y, reduce)(0) - s.mean) / (s.var + 1e-6).sqrt()
    want = z @ model.classifier.weight.t() + model.classifier.bias
    assert torch.allclose(model(y)["logits"][0], want, atol=1e-5)
    loss, _ = model.training_loss(y, lambda lg: lg.sum())
    loss.backward()
    assert model.classifier.weight.grad is not None


def test_running_statistics_follow_the_training_bags():
    model = create_mil_model("meanpool", 2, 2, {}).train()
    for _ in range(400):
        model(torch.randn(50, 2) * 0.1 + torch.tensor([3.0, -1.0]))
    assert torch.allclose(model.standardize.mean, torch.tensor([3.0, -1.0]), atol=0.02)
    # bag means of 50 instances of sd 0.1: sd 0.1 / sqrt(50)
    assert torch.allclose(model.standardize.var.sqrt(), torch.full((2,), 0.1 / 50**0.5), rtol=0.3)


def test_unknown_model_key_rejected():
    with pytest.raises(PipelineError, match="unknown model key 'embed_dims'"):
        create_mil_model("meanpool", 4, 2, {"embed_dims": [8]})


def test_abmil_std_mean_skip_feeds_the_head_attention_and_mean_pooled_instances():
    torch.manual_seed(0)
    model = create_mil_model("abmil_std", 6, 2, {"hidden_dim": 4}).eval()  # the defaults
    assert model.mean_skip and not model.classifier.weight.any()  # mean skip, head starts at 0
    assert model.classifier.in_features == 8 and model.standardize.mean.shape == (8,)
    torch.nn.init.normal_(model.classifier.weight)  # non-zero weights check the arithmetic
    x = torch.randn(13, 6)
    h = model.embed(x)
    z, weights = model.attention(h)
    want = torch.cat([z, h.mean(0)]) @ model.classifier.weight.t() + model.classifier.bias
    out = model(x)  # untrained running statistics: mean 0, scale 1
    assert torch.allclose(out["logits"][0], want, atol=1e-5)
    assert torch.allclose(out["embedding"][0, 4:], h.mean(0), atol=1e-6)
    plain = create_mil_model("abmil_std", 6, 2, {"hidden_dim": 4, "mean_skip": False,
                                                  "zero_head": "false"})  # fmt: skip
    assert plain.classifier.in_features == 4 and not plain.mean_skip
    assert plain.classifier.weight.any()  # Xavier, as abmil
    assert not create_mil_model(
        "abmil", 6, 2, {"hidden_dim": 4, "zero_head": True}
    ).classifier.weight.any()
