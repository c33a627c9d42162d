"""Per-instance score maps of any MIL model, for heatmaps: one function for every method.

``instance_score_maps(model, bag)`` runs the model once in eval mode without gradients and returns named
float32 arrays of length N (one value per patch, in the bag's order). What each name means:

* ``attention``: the weights the bag prediction is pooled with. AB-MIL / gated: the softmax attention.
  DSMIL: the critical-instance attention (max over classes). MSM-MIL: the combined attention
  (sum over stages of stage weight x stage attention), plus ``attention_stage{s}`` per stage.
  TransMIL: the CLS token's attention to each instance in the LAST layer, mean over heads (see below),
  plus ``attention_layer1`` (the first layer's, the score MHIM v1 masks by).
  MHIM-*: the student's ``attention`` as for its baseline (inference path: every instance, plus GRN tokens
  when ``grn_at_inference``; the GRN tokens' share is left out, not renormalised, except for TransMIL).
* ``instance_logit`` (DSMIL, MHIM-DSMIL): the instance classifier's logit (the single output, or the
  bag's predicted class when there are several outputs).
* ``contribution`` (``meanpool``, ``maxpool``): each instance's exact share of the bag logit (the single
  output, or the predicted class) without the bias: for mean pooling ``w . standardise(x_i) / N`` (they
  sum to the logit minus the bias); for max pooling the terms ``w_d . standardise(x_id)`` of the features
  ``d`` where instance ``i`` holds the maximum (ties: the first).
* ``instance_prob`` (MHIM-*): the teacher's class-aware instance probability max_c softmax(C_T(a_i h_i)),
  the score MHIM v2 masks the top of during training; ``teacher_attention``: the teacher's attention.

TransMIL's last-layer CLS row through the Nystrom approximation is
``softmax(q_cls K_l^T) . pinv(softmax(Q_l K_l^T)) . softmax(Q_l K^T)`` over the token sequence
``[zero padding tokens][CLS][instances]`` (landmarks are segment means of that padded sequence; PPEG's
square padding is cropped before the layer, so the instances are exactly the N real ones). The
depthwise residual convolution on the values is not attention and is left out. The row is taken over the
N instances (padding and CLS columns dropped), averaged over heads and divided by its sum, so it sums to
1 over the instances; the Nystrom row only sums to about 1 over all tokens, and the padding and CLS
columns hold a share of it. Bags no longer than ``landmarks`` use exact softmax attention.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.mil.models.common import MILModel, check_bag


def instance_score_maps(model: MILModel, bag: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Named per-instance scores ``{name: float32 [N]}`` of ``model`` on one bag ``[N, D]``."""
    return score_bag(model, bag)[0]


def score_bag(
    model: MILModel, bag: torch.Tensor | np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Score maps and the bag logits ``[C]`` from the same forward pass (eval mode, no gradient).

    An ensemble (``selection: ensemble``) gives its members' maps and logits averaged."""
    from pipeline.mil.mhim import MHIM
    from pipeline.mil.models.ensemble import EnsembleMIL

    if isinstance(model, EnsembleMIL):
        runs = [score_bag(m, bag) for m in model.members]
        maps = {k: np.mean([r[0][k] for r in runs], axis=0).astype(np.float32) for k in runs[0][0]}
        return maps, np.mean([r[1] for r in runs], axis=0)

    x = torch.as_tensor(bag)
    param = next(model.parameters())
    x = check_bag(x.to(device=param.device, dtype=param.dtype), model.name)
    n = x.shape[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(model, MHIM):
                maps, logits = _mhim_maps(model, x)
            else:
                h = model.embed(x)
                pooled = model.pool(h)
                logits = model.classify(pooled)
                maps = _baseline_maps(model, pooled, n, logits, h)
    finally:
        model.train(was_training)
    out = {k: v.detach().float().cpu().numpy().reshape(-1) for k, v in maps.items()}
    bad = [k for k, v in out.items() if v.shape != (n,) or not np.isfinite(v).all()]
    if bad:
        raise PipelineError(
            model.name, f"instance scores {', '.join(bad)} are not {n} finite values"
        )
    return out, logits.detach().float().cpu().numpy().reshape(-1)


def _baseline_maps(
    model: MILModel,
    pooled: dict[str, torch.Tensor],
    n: int,
    logits: torch.Tensor,
    h: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Scores of the first ``n`` pooled tokens (the real instances; GRN tokens may follow)."""
    from pipeline.mil.models.dsmil import DSMIL
    from pipeline.mil.models.pooling import MeanPoolMIL
    from pipeline.mil.models.transmil import TransMIL
    from pipeline.mil.msm import MSMMIL

    if isinstance(model, MeanPoolMIL) and h is not None:
        return {"contribution": pooling_contribution(model, h, logits)}
    if isinstance(model, TransMIL):
        return {
            "attention": transmil_cls_attention(pooled["last_cls_row"][:, :n]),
            "attention_layer1": pooled["attention"][:n],
        }
    if isinstance(model, DSMIL):
        inst = pooled["instance_logits"][:n]
        column = 0 if inst.shape[1] == 1 else int(logits.reshape(-1).argmax())
        return {"attention": pooled["attention"][:n], "instance_logit": inst[:, column]}
    if isinstance(model, MSMMIL):
        stages = pooled["stage_attention"][:, :n]
        maps = {"attention": pooled["attention"][:n]}
        maps.update({f"attention_stage{s}": row for s, row in enumerate(stages)})
        return maps
    if "attention" in pooled:  # AB-MIL, gated AB-MIL and any attention-pooling model
        return {"attention": pooled["attention"][:n]}
    raise PipelineError(model.name, "this model exposes no per-instance score for heatmaps")


def transmil_cls_attention(cls_row: torch.Tensor) -> torch.Tensor:
    """Head-mean of a CLS attention row ``[heads, N]`` over the instances, divided by its sum (sums to 1)."""
    mean = cls_row.float().mean(0)
    total = mean.sum()
    if not torch.isfinite(total) or total.abs() < 1e-12:
        raise PipelineError("transmil", "the CLS attention over the instances sums to ~0")
    return mean / total


def _mhim_maps(model, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Student maps on the inference path, plus the teacher's class-aware probability and attention."""
    n = x.shape[0]
    h = model.student.embed(x)
    use_grn = model.grn is not None and model.grn_at_inference
    pooled = model._student_pool(h, model.grn(h) if use_grn else None)
    logits = model.student.classify(pooled)
    maps = _baseline_maps(model.student, pooled, n, logits)
    ht = model.teacher.embed(x)
    pt = model.teacher.pool(ht)
    maps["instance_prob"] = model.teacher.instance_scores(ht, pt, "class_aware")
    t_logits = model.teacher.classify(pt)
    maps["teacher_attention"] = _baseline_maps(model.teacher, pt, n, t_logits)["attention"]
    return maps, logits


def pooling_contribution(model, h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Each instance's exact share of a mean- or max-pool reference model's logit (see the module doc)."""
    column = 0 if logits.numel() == 1 else int(logits.reshape(-1).argmax())
    w = model.classifier.weight[column] / model.standardize.scale().reshape(-1)
    mean = model.standardize.mean.reshape(-1)
    if model.reduce == "mean":
        return ((h - mean) @ w) / h.shape[0]
    winner = h.argmax(dim=0)  # [D]: the instance holding each feature's maximum
    terms = (h.amax(dim=0) - mean) * w
    return torch.zeros(h.shape[0], dtype=terms.dtype, device=h.device).index_add_(0, winner, terms)
