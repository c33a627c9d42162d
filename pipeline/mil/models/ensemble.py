"""Several trained models of one method whose outputs are averaged: what ``selection: ensemble`` saves.

The inner-fold models of an outer fold (:mod:`pipeline.mil.selection`) predict its test cases together;
the fold folder must hold exactly what was evaluated, so the members are one module whose state dict
(``members.{i}.*``) is one ``model.pt`` and whose ``model.json`` records ``ensemble: k``. Every consumer
handles it through the two shared paths: :func:`pipeline.mil.inference.run_inference` averages the
members' task outputs (probabilities; survival curves and risk), and
:func:`pipeline.mil.scores.score_bag` averages their per-instance score maps for heatmaps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class EnsembleMIL(nn.Module):
    """``members`` (same method, same shapes) averaged in output space; one member is plain inference."""

    def __init__(self, members: Sequence[nn.Module], labels: Sequence[str] | None = None) -> None:
        """``labels``: what each member is (``inner0`` ... the inner-fold models, ``whole`` the model
        trained on the whole training part); recorded in model.json."""
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.labels = (
            list(labels) if labels is not None else [f"inner{i}" for i in range(len(members))]
        )
        if len(self.labels) != len(self.members):
            raise ValueError(f"{len(self.labels)} labels for {len(self.members)} members")
        self.name = getattr(members[0], "name", type(members[0]).__name__)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Refused: logits do not average into the members' mean probability; use run_inference."""
        raise TypeError(
            "EnsembleMIL has no single logits; pipeline.mil.inference.run_inference averages its "
            "members' outputs"
        )


def members(model: nn.Module) -> list[nn.Module]:
    """The models whose outputs make ``model``'s prediction (itself, unless it is an ensemble)."""
    return list(model.members) if isinstance(model, EnsembleMIL) else [model]
