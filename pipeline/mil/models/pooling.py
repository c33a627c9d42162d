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
from pipeline.mil.models.common import MILModel, init_weights, int_list


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


def zero_init(layer: nn.Linear) -> None:
    """A linear head that starts at 0, as logistic regression / Cox fits do.

    A random (Xavier) start is a random direction over all D standardised features; with a weak signal
    in one direction and Adam's bounded steps it is never unlearnt within a schedule: the trainer's
    ``meanpool`` on dense-120 reached AUC 0.48 at lr 1e-4 and 0.65 at lr 1e-3 from it (BENCHMARKS.md,
    issue 17). The loss is convex in a linear head's weights, so 0 loses nothing.
    """
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


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
        zero_init(self.classifier)

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
    """AB-MIL made to reach its mean-pool reference where the mean carries the signal (issue 17).

    Three changes to AB-MIL, each measured on the synthetic sets of ``bench/honest_sets.py``
    (BENCHMARKS.md, "Honest MIL"): (1) the pooled embedding is standardised by running statistics
    before the head: where the evidence is a weak shift in many instances, pooled embeddings of
    different bags differ by ~``1/sqrt(N)`` of the instances' spread and the head, at Adam's fixed
    step size, fits noise first; (2) ``mean_skip`` (default on): the head also sees the mean of the
    projected instances, so the bag-mean evidence is there while attention learns or follows salient
    distractors; (3) ``zero_head`` (default on): the head starts at 0, not at a random direction the
    weak evidence must first unlearn. Attention and instance projection are AB-MIL's; heatmaps draw
    the attention. ``mean_skip=false zero_head=false`` is the plain standardised AB-MIL.
    """

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        hidden_dim: int,
        dropout: float,
        embed_dims: Sequence[int] | str | None = None,
        attention_dim: int | str | None = None,
        activation: str = "gelu",
        zero_head: bool | str = True,
        mean_skip: bool | str = True,
    ) -> None:
        """``mean_skip``: the head also sees the plain mean of the projected instances (concatenated
        with the attention-pooled embedding, both standardised), so the bag-mean evidence a linear
        model uses is there even while attention is still learning or follows salient distractors.
        ``zero_head``: the linear head starts at 0 (:func:`zero_init`), as for ``abmil``.
        ``attention_dim`` (None): a quarter of the embedding width, AB-MIL's 128 at the default 512; a
        fixed 128 on a narrow embedding (16-d) let the attention fit a small survival cohort's noise
        (C-index 0.70 vs 0.82 at width 4, BENCHMARKS.md "Honest MIL", fourth session)."""
        if attention_dim in (None, "None", "null", ""):
            width = int((int_list(embed_dims, "embed_dims", "abmil_std") or [hidden_dim])[-1])
            attention_dim = max(1, width // 4)
        super().__init__(
            in_dim,
            n_outputs,
            hidden_dim=hidden_dim,
            dropout=dropout,
            embed_dims=embed_dims,
            attention_dim=attention_dim,
            activation=activation,
            zero_head=zero_head,
        )
        self.name = "abmil_std"
        self.mean_skip = _flag(mean_skip)
        width = self.hidden_dim * (2 if self.mean_skip else 1)
        self.standardize = RunningStandardize(width)
        if self.mean_skip:
            self.classifier = nn.Linear(width, n_outputs)
            init_weights(self.classifier)
            if _flag(zero_head):
                zero_init(self.classifier)

    def pool(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        z, weights = self.attention(h)
        if self.mean_skip:
            z = torch.cat([z, h.mean(dim=0)])
        return {"embedding": self.standardize(z.unsqueeze(0)), "attention": weights}


def _flag(value: bool | str) -> bool:
    """A model key given as a bool or as text (``mean_skip=true`` on the command line)."""
    return str(value).lower() in ("true", "1", "yes")
