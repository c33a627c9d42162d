"""DSMIL (Li et al., CVPR 2021): max-pooling instance classifier plus critical-instance attention.

Each class's critical instance is the one its instance classifier scores highest; every instance is
weighted by the similarity of its query to that critical query, the class-wise bag representations go
through a Conv1d bag classifier. Model keys (keyword arguments besides ``hidden_dim`` and ``dropout``):
``query_dim``, ``activation``, ``loss_mix``: ``losses`` (default: 0.5 * loss(bag) + 0.5 * loss(max-instance),
as the DSMIL code trains) or ``logits`` (loss of 0.5 * (bag + max-instance) logits, as the MHIM code does).
Prediction logits are 0.5 * (bag + max-instance) logits in both cases.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.mil.models.common import (
    MILModel,
    TaskLoss,
    init_weights,
    make_projection,
    max_class_probability,
)


class DSMIL(MILModel):
    """Projection -> instance classifier (max) + critical-instance attention -> Conv1d bag classifier."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        hidden_dim: int,
        dropout: float,
        query_dim: int = 128,
        activation: str = "gelu",
        loss_mix: str = "losses",
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.name = "dsmil"
        if loss_mix not in ("losses", "logits"):
            raise PipelineError("dsmil", f"loss_mix must be 'losses' or 'logits', got {loss_mix!r}")
        self.loss_mix = loss_mix
        dim, qd = int(hidden_dim), int(query_dim)
        self.hidden_dim = dim
        self.projection = make_projection(in_dim, [dim], activation, float(dropout), self.name)
        self.instance_classifier = nn.Linear(dim, n_outputs)
        self.query = nn.Sequential(nn.Linear(dim, qd), nn.ReLU(), nn.Linear(qd, qd), nn.Tanh())
        self.value = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.bag_classifier = nn.Conv1d(n_outputs, n_outputs, kernel_size=dim)
        init_weights(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)

    def pool(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        inst = self.instance_classifier(h)  # [N, C]
        q = self.query(h)  # [N, Qd]; q is row-wise, so the critical queries are rows of q
        critical = inst.argmax(0)  # [C]
        attn = torch.softmax(q @ q[critical].t() / math.sqrt(q.shape[1]), dim=0)  # [N, C]
        class_emb = attn.t() @ self.value(h)  # [C, H]
        w = self.bag_classifier.weight  # [C, C, H]
        bag = (torch.einsum("ock,ck->o", w, class_emb) + self.bag_classifier.bias).unsqueeze(0)
        return {
            "embedding": class_emb.mean(0, keepdim=True),
            "class_embeddings": class_emb,
            "bag_logits": bag,
            "max_instance_logits": inst.amax(0, keepdim=True),
            "instance_logits": inst,
            "attention": attn.amax(1),
        }

    def classify(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.5 * (pooled["bag_logits"] + pooled["max_instance_logits"])

    def task_objective(self, pooled: dict[str, torch.Tensor], task_loss: TaskLoss) -> torch.Tensor:
        if self.loss_mix == "logits":
            return task_loss(self.classify(pooled))
        return 0.5 * task_loss(pooled["bag_logits"]) + 0.5 * task_loss(
            pooled["max_instance_logits"]
        )

    def consistency_features(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        return pooled["class_embeddings"]

    def instance_scores(
        self, h: torch.Tensor, pooled: dict[str, torch.Tensor], kind: str
    ) -> torch.Tensor:
        """v1: max-over-classes critical-instance attention; v2: max_c softmax of the instance classifier."""
        if kind == "attention":
            return pooled["attention"]
        return max_class_probability(pooled["instance_logits"])
