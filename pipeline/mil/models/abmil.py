"""AB-MIL (Ilse et al., ICML 2018): attention pooling, plain (tanh) or gated (tanh * sigmoid).

Model keys (keyword arguments besides ``hidden_dim`` and ``dropout``): ``embed_dims`` (list, default
``[hidden_dim]``: the instance projection widths; ``[256,128,64]`` with ``activation=relu`` and
``attention_dim=64`` is the MI-Net projection Ilse et al. used on Musk/Tiger), ``attention_dim`` (attention
MLP width), ``activation`` (``gelu`` or ``relu``), ``zero_head`` (the linear head starts at 0 instead of
Xavier: a random head is a random direction the weak evidence of a small cohort must first unlearn).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.mil.models.common import (
    MILModel,
    init_weights,
    int_list,
    make_projection,
    max_class_probability,
)


def class_aware_probability(
    weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, attention: torch.Tensor
) -> torch.Tensor:
    """MHIM-v2 instance score s_i = max_c softmax_c(W (a_i h_i) + b) for a linear classifier ``(W, b)``.

    Computed as ``a_i (h_i W^T) + b`` (one matmul, no [N, H] rescaled copy). One output unit is treated
    as a sigmoid: s_i = max(p, 1 - p). (The MHIM code adds only the first class's bias to every class.)
    """
    return max_class_probability(attention.unsqueeze(1) * (h @ weight.t()) + bias)


class AttentionPool(nn.Module):
    """softmax_i(w^T tanh(V h_i) [* sigmoid(U h_i)]) weights and their weighted sum of instances."""

    def __init__(self, dim: int, attention_dim: int, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        # V and U share one matmul when gated: [N, H] @ [H, 2A]
        self.proj = nn.Linear(dim, attention_dim * (2 if gated else 1))
        self.score = nn.Linear(attention_dim, 1)
        self.attention_dim = attention_dim

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.proj(h)
        if self.gated:
            a = torch.tanh(a[:, : self.attention_dim]) * torch.sigmoid(a[:, self.attention_dim :])
        else:
            a = torch.tanh(a)
        raw = self.score(a).squeeze(1)  # [N]
        weights = F.softmax(raw, dim=0)
        return weights @ h, weights  # [H], [N]


class ABMIL(MILModel):
    """Instance projection -> attention pooling -> linear classifier."""

    gated = False

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
        zero_head: bool | str = False,
    ) -> None:
        name = "abmil_gated" if self.gated else "abmil"
        super().__init__(in_dim, n_outputs)
        self.name = name
        dims = int_list(embed_dims, "embed_dims", name) or [int(hidden_dim)]
        self.hidden_dim = dims[-1]
        self.projection = make_projection(in_dim, dims, activation, float(dropout), name)
        self.attention = AttentionPool(self.hidden_dim, int(attention_dim), self.gated)
        self.classifier = nn.Linear(self.hidden_dim, n_outputs)
        init_weights(self)
        if str(zero_head).lower() in (
            "true",
            "1",
            "yes",
        ):  # the head starts at 0 (pooling.zero_init)
            nn.init.zeros_(self.classifier.weight)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)

    def pool(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        z, weights = self.attention(h)
        return {"embedding": z.unsqueeze(0), "attention": weights}

    def classify(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(pooled["embedding"])

    def instance_scores(
        self, h: torch.Tensor, pooled: dict[str, torch.Tensor], kind: str
    ) -> torch.Tensor:
        if kind == "attention":
            return pooled["attention"]
        return class_aware_probability(
            self.classifier.weight, self.classifier.bias, h, pooled["attention"]
        )


class GatedABMIL(ABMIL):
    """AB-MIL with the gated attention mechanism (tanh(Vh) * sigmoid(Uh))."""

    gated = True
