"""MSM-MIL (Wang et al., 2026): multi-stage masked MIL with mask stacking.

Only the abstract is public, so this is our reading of it (see docs/architecture.md, method notes): a gated-attention model gives the
first bag embedding and, through its most-attended instances, the first mask; each further stage attends
over the instances not masked yet and stacks its own top instances onto the mask, so later stages are
pushed towards patterns the earlier ones did not use; the stage embeddings are pooled by a second gated
attention for the prediction.

Choices the abstract leaves open: the stages share the instance projection and the gated hidden layer
(tanh(Vh) * sigmoid(Uh)) and each stage has its own scoring vector; every stage masks
``ceil(mil.msm.mask_ratio * N)`` new instances (never fewer than one instance is left for the next stage);
``mil.msm.stages`` stages; masks are chosen by attention, so training and inference behave the same. The
loss is the task loss of the final prediction. Model keys: ``attention_dim``, ``activation``.
``instance_scores`` = sum over stages of (stage weight * that stage's instance attention).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.mil.models.abmil import AttentionPool
from pipeline.mil.models.common import MILModel, init_weights, make_projection


def stage_mask_count(n: int, mask_ratio: float) -> int:
    """New instances each stage masks in a bag of ``n``: ceil(mask_ratio * n)."""
    return math.ceil(mask_ratio * n - 1e-9)


def stage_masks(logits: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """Masks in force at each stage, ``[S, N]`` bool, from the stage attention logits ``[S, N]``.

    Stage 0 sees every instance; stage s+1 additionally masks stage s's top ``stage_mask_count``
    not-yet-masked instances (fewer when that would leave no instance). Selection needs no gradient.
    """
    n_stages, n = logits.shape
    step = stage_mask_count(n, mask_ratio)
    masks = torch.zeros(n_stages, n, dtype=torch.bool, device=logits.device)
    masked = torch.zeros(n, dtype=torch.bool, device=logits.device)
    count = 0
    with torch.no_grad():
        for s in range(n_stages - 1):  # loop over stages (a handful), never over instances
            k = min(step, n - 1 - count)
            if k > 0:
                top = logits[s].masked_fill(masked, float("-inf")).topk(k).indices
                masked = masked.clone()
                masked[top] = True
                count += k
            masks[s + 1] = masked
    return masks


class MSMMIL(MILModel):
    """Shared projection -> S masked gated-attention stages -> gated attention over stages -> Linear."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        hidden_dim: int,
        dropout: float,
        stages: int,
        mask_ratio: float,
        attention_dim: int = 128,
        activation: str = "gelu",
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.name = "msm"
        self.stages = int(stages)
        self.mask_ratio = float(mask_ratio)
        if self.stages < 1 or not 0.0 < self.mask_ratio < 1.0:
            raise PipelineError(
                "msm",
                f"need mil.msm.stages >= 1 and 0 < mask_ratio < 1, got "
                f"{self.stages}, {self.mask_ratio}",
            )
        dim, adim = int(hidden_dim), int(attention_dim)
        self.hidden_dim, self.attention_dim = dim, adim
        self.projection = make_projection(in_dim, [dim], activation, float(dropout), "msm")
        self.gate = nn.Linear(dim, 2 * adim)  # V and U of the gated attention, shared by the stages
        self.stage_score = nn.Linear(adim, self.stages)  # one scoring vector per stage
        self.stage_pool = AttentionPool(dim, adim, gated=True)
        self.classifier = nn.Linear(dim, n_outputs)
        init_weights(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)

    def pool(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        g = self.gate(h)
        g = torch.tanh(g[:, : self.attention_dim]) * torch.sigmoid(g[:, self.attention_dim :])
        logits = self.stage_score(g).t()  # [S, N]
        masks = stage_masks(logits, self.mask_ratio)
        weights = logits.masked_fill(masks, float("-inf")).softmax(dim=1)  # [S, N]
        stage_emb = weights @ h  # [S, H]
        z, beta = self.stage_pool(stage_emb)
        return {
            "embedding": z.unsqueeze(0),
            "attention": beta @ weights,
            "stage_embeddings": stage_emb,
            "stage_weights": beta,
            "stage_masks": masks,
            "stage_attention": weights,  # [S, N]: each stage's instance attention (heatmaps)
        }

    def classify(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(pooled["embedding"])

    def instance_scores(
        self, h: torch.Tensor, pooled: dict[str, torch.Tensor], kind: str
    ) -> torch.Tensor:
        return pooled["attention"]
