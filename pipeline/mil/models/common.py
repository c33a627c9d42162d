"""Pieces every MIL model shares: the instance projection and the model contract.

Models take their hyper-parameters as keyword arguments (see each constructor); the registry
(``pipeline.mil.models.create_mil_model``) fills them from the typed ``mil`` settings.

Every model consumes one bag ``x: [N, D]`` and returns a dict with ``logits [1, C]`` and ``embedding
[1, H]`` (the bag embedding just before the classifier). Baselines split their forward pass into
``embed`` (instance projection), ``pool`` (aggregator -> bag embedding + per-instance attention) and
``classify`` so the MHIM wrapper can mask instances between projection and aggregation, append GRN tokens
and score instances with the teacher, without each baseline re-implementing that logic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from pipeline.errors import PipelineError

TaskLoss = Callable[[torch.Tensor], torch.Tensor]


def int_list(value: Any, name: str, where: str) -> list[int] | None:
    """Parse a list of positive ints given as a list or a ``"256,128,64"`` string (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    try:
        dims = [int(v) for v in value]
    except (TypeError, ValueError):
        dims = []
    if not dims or any(d < 1 for d in dims):
        raise PipelineError(
            where,
            f"{name} must be a non-empty list of positive integers, got {value!r}",
            f"Example: {name}=[256,128,64].",
        )
    return dims


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def dropout_mask(
    shape: tuple[int, ...],
    p: float,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The scaled keep mask of :class:`Dropout` (see :class:`_DropoutFn`), drawn from ``generator``
    (None: the device's default stream). The batched inner-CV trainer draws each model's masks with
    it from that model's own stream, so they are the masks the model would get trained alone."""
    n = math.prod(shape)
    bits = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    bits.random_(-(2**63), None, generator=generator)
    drop_levels = round(p * 256)  # bytes below the threshold are dropped
    threshold = drop_levels - 128
    mask = bits.view(torch.int8)[:n].view(shape).to(dtype)  # integers <= 256: exact
    return mask.sub_(threshold - 1).clamp_(0, 1).mul_(256 / (256 - drop_levels))


class _DropoutFn(torch.autograd.Function):
    """Dropout with the keep mask built from 8 random bits per element, without boolean tensors.

    One int64 draw gives 8 elements' bytes; each byte (an int8 in [-128, 127]) becomes an exact small
    integer in ``x``'s dtype, and ``clamp(byte - (t - 1), 0, 1)`` is 1 where ``byte >= t`` and 0 elsewhere,
    so keep probability is ``(128 - t) / 256``: ``p`` rounded to 1/256 (exact for 0.25 and 0.5). The mask,
    already scaled by ``1 / (1 - p)``, is saved for backward. Compared with ``bernoulli_`` plus a
    boolean ``where`` this is ~6x cheaper on a 2900x512 bag, where dropout was the largest cost after
    the matmuls.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        mask = dropout_mask(x.shape, p, x.dtype, x.device)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask draw; on a 2900x512 bag it is the second cost after the matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return torch.zeros_like(x)
        return _DropoutFn.apply(x, self.p)


def make_projection(
    in_dim: int, dims: list[int], activation: str, dropout: float, where: str
) -> nn.Sequential:
    """Instance projection: (Linear -> activation -> dropout) per entry of ``dims`` (one D->hidden_dim layer by default)."""
    if activation not in ACTIVATIONS:
        raise PipelineError(
            where, f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
        )
    layers: list[nn.Module] = []
    prev = in_dim
    for d in dims:
        layers += [nn.Linear(prev, d), ACTIVATIONS[activation](), Dropout(dropout)]
        prev = d
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """Xavier-normal linear weights, zero biases (as CLAM and the MHIM code initialise MIL heads)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def max_class_probability(logits: torch.Tensor) -> torch.Tensor:
    """``max_c softmax_c(logits)`` per row of ``[N, C]``; one output unit is read as a sigmoid."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.maximum(p, 1 - p)
    return logits.softmax(dim=1).amax(dim=1)


def check_bag(x: torch.Tensor, where: str) -> torch.Tensor:
    """Accept ``[N, D]`` (or ``[1, N, D]``) with N >= 1; return ``[N, D]``."""
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2 or x.shape[0] < 1:
        raise PipelineError(
            where,
            f"expected one bag of shape [N, D] with N >= 1, got {tuple(x.shape)}",
            "Pass one slide's feature matrix per call (batch size 1).",
        )
    return x


class MILModel(nn.Module):
    """Contract shared by all models (see module docstring); baselines override ``embed/pool/classify``."""

    name = "mil"
    needs_teacher = False

    def __init__(self, in_dim: int, n_outputs: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_outputs = n_outputs

    # --- pieces used by the MHIM wrapper -------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Instance projection ``[N, D] -> [N, H]``."""
        raise NotImplementedError

    def pool(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Aggregate projected instances ``[N, H]`` into ``embedding [1, H]`` (+ ``attention [N]``, ...)."""
        raise NotImplementedError

    def classify(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bag logits ``[1, C]`` from the output of :meth:`pool`."""
        raise NotImplementedError

    def instance_scores(
        self, h: torch.Tensor, pooled: dict[str, torch.Tensor], kind: str
    ) -> torch.Tensor:
        """Per-instance hardness score ``[N]`` for MHIM (``class_aware`` or ``attention``)."""
        raise NotImplementedError

    def task_objective(self, pooled: dict[str, torch.Tensor], task_loss: TaskLoss) -> torch.Tensor:
        """Supervised loss of one bag (DSMIL mixes bag and max-instance logits here)."""
        return task_loss(self.classify(pooled))

    def consistency_features(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bag features ``[K, F]`` the MHIM consistency loss compares (softmax over F, mean over K)."""
        return pooled["embedding"]

    # --- public contract -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = check_bag(x, self.name)
        pooled = self.pool(self.embed(x))
        out = {"logits": self.classify(pooled), "embedding": pooled["embedding"]}
        if "attention" in pooled:
            out["instance_scores"] = pooled["attention"]
        return out

    def training_loss(
        self, x: torch.Tensor, task_loss: TaskLoss, progress: float = 0.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = check_bag(x, self.name)
        pooled = self.pool(self.embed(x))
        out = {"logits": self.classify(pooled), "embedding": pooled["embedding"]}
        return self.task_objective(pooled, task_loss), out

    def after_optimizer_step(self) -> None:
        """Hook after each optimiser step (EMA updates for MHIM; nothing for baselines)."""

    def load_teacher(
        self, state_dict: Mapping[str, torch.Tensor], source: str = "teacher checkpoint"
    ) -> None:
        raise PipelineError(
            self.name, "this method has no teacher", "Only MHIM methods take --teacher-init."
        )
