"""MHIM-MIL (Tang et al.: v1 ICCV 2023, v2 2025): masked hard instance mining around any baseline.

Per training bag (all switches live in ``mil.mhim``):

1. The **teacher** (the baseline architecture, initialised from the baseline trained on the same fold
   via :meth:`MHIM.load_teacher`, afterwards only an EMA of the student, ``teacher_momentum``) scores every
   instance: ``instance_score: class_aware`` (v2) gives s_i = max_c softmax(C_T(a_i h_i)); ``attention``
   (v1) gives the raw attention weight a_i.
2. **RHSM** (randomly hard sample masking): the top ``ceil(2 * beta * N)`` instances by score are
   candidates and a random ``ceil(candidates / 2)`` of them are masked. beta = ``rhsm_ratio``,
   cosine-decayed to 0 over training when ``rhsm_decay`` (beta_t = beta * (1 + cos(pi * progress)) / 2).
3. **Random masking**: ``random_mask_ratio`` is the fraction of the remaining instances that is MASKED
   (``floor((1 - ratio) * rest)`` are kept, at least one). The public code's ``merge_ratio`` is the
   fraction *kept* (its README grid keeps 80-90 %); the paper masks 70-90 %, and we default to masking 80 %.
   0 disables it.
4. **GRN** (global recycle network, ``grn``): K = ``grn_queries`` global queries cross-attend (8 heads,
   LayerNorm) to the randomly masked instances; their K outputs are appended to the kept instances. The
   queries get no gradient: after each optimiser step they move towards that output by EMA
   (``grn_momentum``). With nothing randomly masked there is nothing to recycle and no token is appended.
5. The student predicts from the kept instances (+ GRN tokens); loss = task loss +
   ``consistency_weight`` * L_con with L_con = -softmax(F_t / ``temperature``) . log softmax(F_s) between the
   bag embeddings of teacher (whole bag) and student.

Inference (``model.eval()``): the student alone on every instance, plus the GRN tokens of the whole bag when
``grn_at_inference`` (paper §3.6). ``init_student_from_baseline`` also copies the baseline's instance
projection into the student (paper Table 11). MHIM v1 is ``instance_score: attention`` (the ICCV version
also had no GRN: ``grn: false``).

Deliberate differences from the public code: the teacher runs in eval mode (no dropout noise in its scores
and targets); the class-aware score adds the whole classifier bias (the code adds the first class's bias to
every class); TransMIL's v1 score is the head-mean CLS attention (the code votes over heads); kept instances
stay in their input order (the code shuffles them, which matters for TransMIL's PPEG); a bag is never
masked down to nothing; a teacher checkpoint that does not match fails instead of loading partially.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoints import state_dict_problems
from pipeline.errors import PipelineError
from pipeline.mil.models.common import Dropout, MILModel, TaskLoss, check_bag
from pipeline.settings import MILSettings

_EPS = 1e-9


def rhsm_ratio_at(base_ratio: float, progress: float, decay: bool) -> float:
    """beta at ``progress`` in [0, 1]: cosine decay from ``base_ratio`` to 0 (constant without decay)."""
    if not decay:
        return float(base_ratio)
    p = min(max(float(progress), 0.0), 1.0)
    return float(base_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def mask_counts(n: int, hard_ratio: float, random_mask_ratio: float) -> tuple[int, int, int, int]:
    """``(candidates, hard_masked, randomly_masked, kept)`` for a bag of ``n`` instances.

    candidates = ceil(2 * beta * n); hard = ceil(candidates / 2), at most n - 1; of the rest
    r = n - hard, floor((1 - random_mask_ratio) * r) are kept (at least one) and the others masked.
    """
    candidates = min(n, math.ceil(2.0 * hard_ratio * n - _EPS)) if hard_ratio > 0 else 0
    hard = min(n - 1, math.ceil(candidates / 2 - _EPS))
    rest = n - hard
    kept = (
        max(1, math.floor((1.0 - random_mask_ratio) * rest + _EPS))
        if random_mask_ratio > 0
        else rest
    )
    return candidates, hard, rest - kept, kept


@dataclass
class MaskSplit:
    """Instance indices of one bag: ``keep`` (ascending), ``recycled`` (randomly masked), ``hard`` (RHSM)."""

    keep: torch.Tensor
    recycled: torch.Tensor
    hard: torch.Tensor


def mhim_masks(
    scores: torch.Tensor,
    hard_ratio: float,
    random_mask_ratio: float,
    generator: torch.Generator | None = None,
) -> MaskSplit:
    """Split instances by RHSM then random masking (counts from :func:`mask_counts`); no Python loop."""
    n = scores.shape[0]
    candidates, n_hard, n_random, n_keep = mask_counts(n, hard_ratio, random_mask_ratio)
    device = scores.device
    if n_hard:
        top = torch.topk(scores, candidates).indices
        hard = top[torch.randperm(candidates, generator=generator, device=device)[:n_hard]]
        is_hard = torch.zeros(n, dtype=torch.bool, device=device)
        is_hard[hard] = True
        rest = torch.nonzero(~is_hard).squeeze(1)
    else:
        hard = torch.empty(0, dtype=torch.long, device=device)
        rest = torch.arange(n, device=device)
    if n_random:
        order = torch.randperm(rest.shape[0], generator=generator, device=device)
        keep = rest[order[:n_keep]].sort().values
        recycled = rest[order[n_keep:]]
    else:
        keep, recycled = rest, rest[:0]
    return MaskSplit(keep=keep, recycled=recycled, hard=hard)


def consistency_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over rows of -softmax(teacher / tau) . log_softmax(student) (teacher is a fixed target)."""
    target = F.softmax(teacher.detach() / temperature, dim=-1)
    return -(target * F.log_softmax(student, dim=-1)).sum(-1).mean()


class GlobalRecycleNetwork(nn.Module):
    """K EMA-updated global queries cross-attending (multi-head, LayerNorm) to a set of instances."""

    def __init__(self, dim: int, queries: int, heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise PipelineError(
                "mhim", f"hidden_dim {dim} must be divisible by the {heads} GRN heads"
            )
        self.heads, self.dim_head = heads, dim // heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.attn_dropout = Dropout(dropout)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), Dropout(dropout))
        bound = math.sqrt(
            6.0 / (3 * 16 * 16 + dim)
        )  # VPT-style prompt initialisation, as the paper's code
        self.register_buffer("queries", torch.empty(queries, dim).uniform_(-bound, bound))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h [M, dim]`` (M >= 1) -> ``[K, dim]``.

        Evaluated as (q W_k) x^T and (a x) W_v instead of projecting every instance to keys and values:
        the same numbers, ~10x fewer multiply-adds for K queries over thousands of masked instances.
        """
        dim, heads, d = h.shape[1], self.heads, self.dim_head
        x = self.norm(h)  # [M, dim]
        q = self.to_q(self.norm(self.queries)).view(-1, heads, d)  # [K, heads, d]
        w_k, w_v = self.to_kv.weight.view(2, heads, d, dim).unbind(0)  # [heads, d, dim] each
        qk = torch.einsum("khd,hdc->hkc", q, w_k) * d**-0.5  # [heads, K, dim]
        attn = self.attn_dropout((qk @ x.t().to(qk.dtype)).softmax(-1))  # [heads, K, M]
        context = attn @ x.to(attn.dtype)  # [heads, K, dim]
        out = torch.einsum("hkc,hdc->khd", context, w_v.to(context.dtype))  # [K, heads, d]
        return self.to_out(out.reshape(q.shape[0], dim))

    @torch.no_grad()
    def ema_update(self, output: torch.Tensor, momentum: float) -> None:
        """queries <- momentum * queries + (1 - momentum) * output."""
        self.queries.lerp_(output.detach().to(self.queries.dtype), 1.0 - momentum)


class MHIM(MILModel):
    """Student/teacher wrapper around a baseline (``abmil``, ``transmil`` or ``dsmil``); see module doc."""

    needs_teacher = True

    def __init__(
        self,
        baseline: str,
        in_dim: int,
        n_outputs: int,
        *,
        rhsm_ratio: float,
        rhsm_decay: bool,
        random_mask_ratio: float,
        instance_score: str,
        grn: bool,
        grn_queries: int,
        grn_momentum: float,
        grn_at_inference: bool,
        teacher_momentum: float,
        consistency_weight: float,
        temperature: float,
        init_student_from_baseline: bool,
        **baseline_kwargs: Any,
    ) -> None:
        """``baseline_kwargs`` (``hidden_dim``, ``dropout``, model keys) build the student and the teacher."""
        from pipeline.mil.models import method_info, model_class

        if method_info(baseline)["family"] in ("mhim", "msm"):
            raise PipelineError(
                "mhim", f"cannot wrap '{baseline}'", "Use abmil, transmil or dsmil."
            )
        base_cls = model_class(baseline)
        # Earlier versions built a throwaway default baseline here (to find its class), which drew
        # random numbers; drawing the same ones keeps seeded runs (`make demo`) identical to theirs.
        defaults = MILSettings.defaults()
        base_cls(1, 1, hidden_dim=defaults.hidden_dim, dropout=defaults.dropout)
        name = f"mhim_{baseline}"
        super().__init__(in_dim, n_outputs)
        self.name, self.baseline = name, baseline
        if instance_score not in ("class_aware", "attention"):
            raise PipelineError(
                name,
                f"mil.mhim.instance_score must be class_aware or attention, got {instance_score!r}",
            )
        ratios = {
            "rhsm_ratio": rhsm_ratio,
            "random_mask_ratio": random_mask_ratio,
            "grn_momentum": grn_momentum,
            "teacher_momentum": teacher_momentum,
        }
        for key, value in ratios.items():
            if not 0.0 <= float(value) <= 1.0:
                raise PipelineError(name, f"mil.mhim.{key} must be in [0, 1], got {value!r}")
        if float(random_mask_ratio) >= 1.0:
            raise PipelineError(
                name, "mil.mhim.random_mask_ratio must be < 1 (it is the fraction MASKED)"
            )
        self.rhsm_ratio, self.rhsm_decay = float(rhsm_ratio), bool(rhsm_decay)
        self.random_mask_ratio, self.instance_score = float(random_mask_ratio), instance_score
        self.grn_momentum, self.grn_at_inference = float(grn_momentum), bool(grn_at_inference)
        self.teacher_momentum = float(teacher_momentum)
        self.consistency_weight, self.temperature = float(consistency_weight), float(temperature)
        self.init_student_from_baseline = bool(init_student_from_baseline)
        self.student = base_cls(in_dim, n_outputs, **baseline_kwargs)
        self.teacher = base_cls(in_dim, n_outputs, **baseline_kwargs)
        self.teacher.load_state_dict(self.student.state_dict())  # no baseline given: a student copy
        self.teacher.requires_grad_(False)
        self.hidden_dim = self.student.hidden_dim
        self.grn = GlobalRecycleNetwork(self.hidden_dim, int(grn_queries)) if grn else None
        self._pending_queries: torch.Tensor | None = None

    # --- the contract ----------------------------------------------------------------------------
    def _student_pool(
        self, h: torch.Tensor, recycle: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        tokens = h if recycle is None else torch.cat([h, recycle])
        return self.student.pool(tokens)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inference path: student only, every instance, GRN tokens of the whole bag if configured."""
        x = check_bag(x, self.name)
        h = self.student.embed(x)
        recycle = self.grn(h) if self.grn is not None and self.grn_at_inference else None
        pooled = self._student_pool(h, recycle)
        out = {"logits": self.student.classify(pooled), "embedding": pooled["embedding"]}
        if "attention" in pooled:
            out["instance_scores"] = pooled["attention"][: x.shape[0]]
        return out

    def training_loss(
        self, x: torch.Tensor, task_loss: TaskLoss, progress: float = 0.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = check_bag(x, self.name)
        beta = rhsm_ratio_at(self.rhsm_ratio, progress, self.rhsm_decay)
        alpha = self.consistency_weight
        n = x.shape[0]
        scores = teacher_feats = None
        if beta > 0 or alpha > 0:
            with torch.no_grad():
                self.teacher.eval()
                ht = self.teacher.embed(x)
                pt = self.teacher.pool(ht)
                if beta > 0:
                    scores = self.teacher.instance_scores(ht, pt, self.instance_score)
                teacher_feats = self.teacher.consistency_features(pt)
        if scores is None:
            scores = torch.zeros(n, device=x.device)
        split = mhim_masks(scores, beta, self.random_mask_ratio)
        n_keep, n_rec = split.keep.shape[0], split.recycled.shape[0]
        use_grn = self.grn is not None and n_rec > 0
        if n_keep == n:
            rows = None
        elif use_grn:
            rows = torch.cat([split.keep, split.recycled])
        else:
            rows = split.keep
        # index_select: ~6x faster than x[rows] on a [2900, 1024] bf16 bag
        h = self.student.embed(x if rows is None else x.index_select(0, rows))
        recycle = None
        if use_grn:  # split, not two slices: its backward is one concatenation, not two zero-fills
            h, h_recycled = h.split([n_keep, n_rec])
            recycle = self.grn(h_recycled)
            self._pending_queries = recycle.detach()
        pooled = self._student_pool(h, recycle)
        loss = self.student.task_objective(pooled, task_loss)
        if alpha > 0:
            student_feats = self.student.consistency_features(pooled)
            loss = loss + alpha * consistency_loss(student_feats, teacher_feats, self.temperature)
        out = {
            "logits": self.student.classify(pooled),
            "embedding": pooled["embedding"],
            "n_kept": torch.tensor(n_keep),
            "n_recycled": torch.tensor(n_rec),
            "n_hard_masked": torch.tensor(split.hard.shape[0]),
        }
        return loss, out

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """EMA: teacher <- lambda * teacher + (1 - lambda) * student; GRN queries towards their output."""
        lam = self.teacher_momentum
        t_params = list(self.teacher.parameters())
        s_params = [p.detach() for p in self.student.parameters()]
        torch._foreach_lerp_(t_params, s_params, 1.0 - lam)
        if self.grn is not None and self._pending_queries is not None:
            self.grn.ema_update(self._pending_queries, self.grn_momentum)
        self._pending_queries = None

    def load_teacher(
        self, state_dict: Mapping[str, torch.Tensor], source: str = "teacher checkpoint"
    ) -> None:
        """Initialise the teacher from the baseline's ``model.pt`` state dict; any mismatch is an error."""
        problems = state_dict_problems(self.teacher.state_dict(), state_dict)
        if problems:
            raise PipelineError(
                source,
                f"does not fit the {self.baseline} teacher of {self.name} ({'; '.join(problems)})",
                f"Pass the model.pt of the {self.baseline} baseline trained on the same fold with the same "
                "features and mil settings (hidden_dim and model keys).",
            )
        self.teacher.load_state_dict(state_dict)
        if self.init_student_from_baseline:
            self.student.projection.load_state_dict(self.teacher.projection.state_dict())
