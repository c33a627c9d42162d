"""TransMIL (Shao et al., NeurIPS 2021): CLS token, two Nystrom self-attention layers, PPEG between them.

Model keys (besides the standard ``mil`` section): ``heads`` (8), ``landmarks`` (256), ``pinv_iterations``
(6, the Moore-Penrose iterations of the Nystromformer), ``attention_dropout`` (0.1), ``ppeg`` (true),
``activation`` (``gelu``).

Two deliberate differences from the lucidrains ``nystrom_attention`` code that TransMIL and MHIM ship:
sequences no longer than ``landmarks`` use exact softmax attention (the reference pads them with up to
``landmarks`` zero tokens that soak up most of the attention of a small bag), and ``attn1 @ (pinv @ (attn3 @
v))`` is evaluated right to left, which is the same product with ~3x fewer multiply-adds. PPEG's 7x7, 5x5
and 3x3 depthwise convolutions plus identity are applied as one summed 7x7 kernel (identical result).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.mil.models.common import (
    Dropout,
    MILModel,
    init_weights,
    make_projection,
    max_class_probability,
    resolve_cfg,
)

TRANSMIL_KEYS = {
    "heads": 8,
    "landmarks": 256,
    "pinv_iterations": 6,
    "attention_dropout": 0.1,
    "ppeg": True,
    "activation": "gelu",
}


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of ``a [h, m, m]`` by the Nystromformer's 3rd-order iteration.

    Starts from ``a^T / (max row sum * max column sum)`` (one scale over all heads, as the reference).
    """
    absa = a.abs()
    z = a.transpose(-1, -2) / (absa.sum(-1).amax() * absa.sum(-2).amax())
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(nn.Module):
    """Multi-head self-attention approximated with segment-mean landmarks (Xiong et al., AAAI 2021).

    Input and output ``[n, dim]``. Also returns the first token's (CLS) attention row over the other tokens
    ``[heads, n-1]`` and their values ``[heads, n-1, dim_head]``, which MHIM turns into instance scores.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        landmarks: int,
        pinv_iterations: int,
        dropout: float,
        residual_kernel: int = 33,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by heads {heads}")
        self.heads, self.dim_head = heads, dim // heads
        self.landmarks, self.pinv_iterations = landmarks, pinv_iterations
        self.scale = self.dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), Dropout(dropout))
        self.res_conv = nn.Conv2d(
            heads,
            heads,
            (residual_kernel, 1),
            padding=(residual_kernel // 2, 0),
            groups=heads,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        h, m = self.heads, self.landmarks
        pad = (-n) % m if n > m else 0
        if (
            pad
        ):  # front zero padding so the sequence splits into m equal segments (as the reference)
            x = F.pad(x, (0, 0, pad, 0))
        q, k, v = (
            self.to_qkv(x).view(-1, 3, h, self.dim_head).permute(1, 2, 0, 3)
        )  # each [h, np, d]
        q = q * self.scale
        if n <= m:
            attn = (q @ k.transpose(-1, -2)).softmax(-1)  # exact attention [h, n, n]
            out = attn @ v
            cls_row = attn[:, 0]
        else:
            seg = q.shape[1] // m
            q_l = q.view(h, m, seg, -1).mean(2)
            k_l = k.view(h, m, seg, -1).mean(2)
            a1 = (q @ k_l.transpose(-1, -2)).softmax(-1)  # [h, np, m]
            a2 = (q_l @ k_l.transpose(-1, -2)).softmax(-1)  # [h, m, m]
            a3 = (q_l @ k.transpose(-1, -2)).softmax(-1)  # [h, m, np]
            z = iterative_pinv(a2, self.pinv_iterations)
            out = a1 @ (z @ (a3 @ v))
            cls_row = (a1[:, pad].unsqueeze(1) @ z @ a3).squeeze(1)
        out = out + self.res_conv(v.unsqueeze(0)).squeeze(0)
        out = self.to_out(out.transpose(0, 1).reshape(x.shape[0], -1))[pad:]
        return out, cls_row[:, pad + 1 :], v[:, pad + 1 :]


class PPEG(nn.Module):
    """Pyramid position encoding: tokens laid row-major on a square grid, depthwise 7/5/3 convs + identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape
        side = math.ceil(math.sqrt(n))
        grid = torch.cat([x, x[: side * side - n]]) if side * side > n else x
        if side * side - n > n:  # tiny bags: repeat cyclically to fill the square
            grid = x[torch.arange(side * side, device=x.device) % n]
        kernel = (
            self.proj.weight
            + F.pad(self.proj1.weight, (1, 1, 1, 1))
            + F.pad(self.proj2.weight, (2, 2, 2, 2))
        )
        kernel = kernel.clone()
        kernel[:, 0, 3, 3] += 1.0  # identity term
        bias = self.proj.bias + self.proj1.bias + self.proj2.bias
        img = grid.t().reshape(1, c, side, side)
        out = F.conv2d(img, kernel, bias, padding=3, groups=c)
        return out.reshape(c, side * side).t()[:n]


class TransMIL(MILModel):
    """Projection -> [CLS; instances] -> Nystrom layer -> PPEG -> Nystrom layer -> LayerNorm -> CLS -> Linear."""

    MODEL_KEYS = TRANSMIL_KEYS

    def __init__(self, in_dim: int, n_outputs: int, cfg: dict[str, Any] | None = None) -> None:
        cfg = resolve_cfg(cfg, TRANSMIL_KEYS, where="transmil")
        super().__init__(in_dim, n_outputs, cfg)
        self.name = "transmil"
        dim = int(cfg["hidden_dim"])
        self.hidden_dim = dim
        self.projection = make_projection(
            in_dim, [dim], cfg["activation"], float(cfg["dropout"]), self.name
        )
        self.cls_token = nn.Parameter(torch.randn(1, dim))
        args = (
            dim,
            int(cfg["heads"]),
            int(cfg["landmarks"]),
            int(cfg["pinv_iterations"]),
            float(cfg["attention_dropout"]),
        )
        self.norm1, self.attn1 = nn.LayerNorm(dim), NystromAttention(*args)
        self.ppeg = PPEG(dim) if cfg["ppeg"] else None
        self.norm2, self.attn2 = nn.LayerNorm(dim), NystromAttention(*args)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_outputs)
        init_weights(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)

    def pool(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.cat([self.cls_token, h])
        z, cls_row, values = self.attn1(self.norm1(x))
        x = x + z
        if self.ppeg is not None:
            x = torch.cat([x[:1], self.ppeg(x[1:])])
        x = x + self.attn2(self.norm2(x))[0]
        emb = self.norm(x[:1])
        return {
            "embedding": emb,
            "attention": cls_row.mean(0),
            "cls_row": cls_row,
            "values": values,
        }

    def classify(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(pooled["embedding"])

    def instance_scores(
        self, h: torch.Tensor, pooled: dict[str, torch.Tensor], kind: str
    ) -> torch.Tensor:
        """v1: layer-1 CLS attention (mean over heads); v2: max_c softmax(C(to_out(concat_h a_hi v_hi)))."""
        if kind == "attention":
            return pooled["attention"]
        weighted = pooled["cls_row"].unsqueeze(-1) * pooled["values"]  # [heads, N, d]
        contrib = self.attn1.to_out(weighted.transpose(0, 1).reshape(weighted.shape[1], -1))
        return max_class_probability(self.classifier(contrib))
