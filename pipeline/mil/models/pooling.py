"""Reference baselines: mean- or max-pool of the raw instance features -> standardise -> one linear layer.

No projection, no attention: on data where the bag mean (or the most extreme value per feature) carries
the signal, this is logistic regression (classification) or the task's survival head on bag statistics,
trained by the same trainer as every MIL method. A MIL method that does not beat its mean-pool reference
on a cohort has not learnt anything a linear model on bag means could not. ``instance_scores`` is the
per-instance contribution to the head's first output, so heatmaps work; MHIM cannot wrap these models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.mil.models.abmil import ABMIL
from pipeline.mil.models.common import MILModel, init_weights


class RunningStandardize(nn.Module):
    """Standardise bag embeddings by running mean / variance, updated in training (momentum ``m``).

    Bag means of WSI features have a tiny spread (about ``1/sqrt(N)`` of the instances'), so a linear
    head on them learns at Adam's fixed step size very slowly; BatchNorm cannot help with one bag per
    step. The running statistics are used in training too (detached), so one bag is enough.
    """

    def __init__(self, dim: int, momentum: float = 0.02) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.zeros(dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                x = z.detach().float().mean(0)
                # plain running mean / variance over the first 1/momentum bags, then exponential
                a = max(self.momentum, 1.0 / (int(self.seen) + 1))
                d = x - self.mean
                self.mean.add_(a * d)
                self.var.copy_((1 - a) * (self.var + a * d * d) if int(self.seen) else d * 0)
                self.seen += 1
        return (z - self.mean) / self.scale()

    def scale(self) -> torch.Tensor:
        """Running standard deviation (1 until two bags gave a spread)."""
        if int(self.seen) < 2:
            return torch.ones_like(self.var)
        return (self.var + 1e-6).sqrt()


class MeanPoolMIL(MILModel):
    """``logits = W standardise(mean_i(x_i)) + b``."""

    reduce = "mean"

    def __init__(self, in_dim: int, n_outputs: int, *, hidden_dim: int, dropout: float) -> None:
        """``hidden_dim`` and ``dropout`` are accepted (every method gets them) and unused: no projection."""
        super().__init__(in_dim, n_outputs)
        self.name = f"{self.reduce}pool"
        self.hidden_dim = in_dim
        self.standardize = RunningStandardize(in_dim)
        self.classifier = nn.Linear(in_dim, n_outputs)
        init_weights(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pool(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        z = h.mean(dim=0) if self.reduce == "mean" else h.amax(dim=0)
        return {"embedding": self.standardize(z.unsqueeze(0))}

    def classify(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(pooled["embedding"])

    def instance_scores(
        self, h: torch.Tensor, pooled: dict[str, torch.Tensor], kind: str
    ) -> torch.Tensor:
        return (h - self.standardize.mean) / self.standardize.scale() @ self.classifier.weight[0]


class MaxPoolMIL(MeanPoolMIL):
    """``logits = W max_i(x_i) + b`` (per-feature maximum over instances)."""

    reduce = "max"


class StandardizedABMIL(ABMIL):
    """AB-MIL whose attention-pooled embedding is standardised by running statistics before the head.

    Where the evidence is a weak shift in many instances, the pooled embeddings of different bags differ
    by about ``1/sqrt(N)`` of the instances' spread: the linear head then moves them at Adam's fixed step
    size far too slowly and the model fits noise first. Standardising the pooled embedding (as the
    mean-pool reference does) restores the scale; attention and instance projection are AB-MIL's.
    """

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        hidden_dim: int,
        dropout: float,
        embed_dims: Sequence[int] | str | None = None,
        attention_dim: int = 128,
        activation: str = "gelu",
    ) -> None:
        super().__init__(
            in_dim,
            n_outputs,
            hidden_dim=hidden_dim,
            dropout=dropout,
            embed_dims=embed_dims,
            attention_dim=attention_dim,
            activation=activation,
        )
        self.name = "abmil_std"
        self.standardize = RunningStandardize(self.hidden_dim)

    def pool(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        z, weights = self.attention(h)
        return {"embedding": self.standardize(z.unsqueeze(0)), "attention": weights}
