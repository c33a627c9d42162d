"""TransMIL (Shao et al., NeurIPS 2021): CLS token, two Nystrom self-attention layers, PPEG between them.

Model keys (keyword arguments besides ``hidden_dim`` and ``dropout``): ``heads``, ``landmarks``,
``pinv_iterations`` (the Moore-Penrose iterations of the Nystromformer), ``attention_dropout``, ``ppeg``,
``activation``.

Two deliberate differences from the lucidrains ``nystrom_attention`` code that TransMIL and MHIM ship:
sequences no longer than ``landmarks`` use exact softmax attention (the reference pads them with up to
``landmarks`` zero tokens that soak up most of the attention of a small bag), and ``attn1 @ (pinv @ (attn3 @
v))`` is evaluated right to left, which is the same product with ~3x fewer multiply-adds. PPEG's 7x7, 5x5
and 3x3 depthwise convolutions plus identity are applied as one summed 7x7 kernel (identical result).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.mil.models.common import (
    Dropout,
    MILModel,
    init_weights,
    make_projection,
    max_class_probability,
)


class _Softmax(torch.autograd.Function):
    """Softmax over the last dim with a fused backward: y * g - y * sum(y * g).

    Same values as ``torch.softmax``; PyTorch's CPU backward is ~2x slower on the [8, 3072, 256]
    Nystrom kernels, where it was a tenth of a TransMIL training step.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.softmax(-1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        gy = grad * y
        return torch.addcmul(gy, y, gy.sum(-1, keepdim=True), value=-1.0)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim in ``x``'s dtype (bfloat16 under autocast: torch accumulates it in
    float32, and the result is what the next bfloat16 matmul would round it to anyway)."""
    return _Softmax.apply(x) if torch.is_grad_enabled() and x.requires_grad else x.softmax(-1)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


class _DepthwiseConv2d(torch.autograd.Function):
    """Depthwise 'same' conv whose weight gradient is one depthwise conv with the output gradient as
    kernel (PyTorch's CPU depthwise backward took 2.5x longer for PPEG's 512 x 54 x 54 maps)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        c, pad = x.shape[1], weight.shape[-1] // 2
        grad = grad.contiguous()
        grad_x = F.conv2d(grad, weight.flip(-1, -2), padding=pad, groups=c)
        xp = F.pad(x, (pad, pad, pad, pad))
        grad_w = F.conv2d(xp, grad.view(c, 1, *grad.shape[-2:]), groups=c).view_as(weight)
        return grad_x, grad_w, grad.sum((0, 2, 3))


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of ``a [h, m, m]`` by the Nystromformer's iteration, unrolled.

    Starts from ``a^T / (max row sum * max column sum)`` (one scale over all heads, as the reference) and
    repeats z <- z (13 I - a z (15 I - a z (7 I - a z))) / 4. Kept as the reference for
    :func:`spectral_pinv`, which computes the same function ~10x cheaper.
    """
    z = a.transpose(-1, -2) / _pinv_scale(a)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _pinv_scale(a: torch.Tensor) -> torch.Tensor:
    absa = a.abs()
    return absa.sum(-1).amax() * absa.sum(-2).amax()


def _iteration_polynomial(lam: torch.Tensor, scale: torch.Tensor, iterations: int):
    """p(lam) and dp/dlam of the scalar form of the iteration (float64).

    Every iterate is z_k = a^T p_k(a a^T): with S = a a^T and u = lam * p_k,
    p_{k+1} = p_k (13 - 15 u + 7 u^2 - u^3) / 4, starting from p_0 = 1 / scale.
    """
    p = torch.full_like(lam, 1.0) / scale
    dp = torch.zeros_like(lam)
    for _ in range(iterations):
        u = lam * p
        du = p + lam * dp
        poly = 13 - u * (15 - u * (7 - u))
        dpoly = (-15 + u * (14 - 3 * u)) * du
        p, dp = 0.25 * p * poly, 0.25 * (dp * poly + p * dpoly)
    return p, dp


class _SpectralPinv(torch.autograd.Function):
    """z = a^T p(a a^T) through one symmetric eigendecomposition; backward by Daleckii-Krein.

    Equal (up to rounding) to the unrolled iteration and to its autograd gradient, including the
    gradient through the scale, at a fraction of the cost: 2 x 24 + 48 m^3 products per head become an
    eigendecomposition and ~9 products.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, scale: torch.Tensor, iterations: int) -> torch.Tensor:
        lam, vec = torch.linalg.eigh(a @ a.transpose(-1, -2))
        lam64 = lam.double().clamp_min(0.0)
        p, dp = _iteration_polynomial(lam64, scale.double(), iterations)
        f = (vec * p.to(a.dtype).unsqueeze(-2)) @ vec.transpose(-1, -2)  # p(S), symmetric
        ctx.save_for_backward(a, vec, f, scale)
        ctx.spectrum = (lam64, p, dp)
        return a.transpose(-1, -2) @ f

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, vec, f, scale = ctx.saved_tensors
        lam, p, dp = ctx.spectrum
        grad_a = f @ grad.transpose(-1, -2)  # through the a^T factor
        g_f = a @ grad
        m = vec.transpose(-1, -2) @ (0.5 * (g_f + g_f.transpose(-1, -2))) @ vec
        diff_lam = lam.unsqueeze(-1) - lam.unsqueeze(-2)
        diff_p = p.unsqueeze(-1) - p.unsqueeze(-2)
        close = diff_lam.abs() <= 1e-9 * lam.amax().clamp_min(1.0)
        mean_dp = 0.5 * (dp.unsqueeze(-1) + dp.unsqueeze(-2))
        gamma = torch.where(close, mean_dp, diff_p / torch.where(close, 1.0, diff_lam))
        g_s = vec @ (gamma.to(a.dtype) * m) @ vec.transpose(-1, -2)
        grad_a = grad_a + 2.0 * (g_s @ a)
        dp_dscale = -(p + lam * dp) / scale.double()  # p_k(lam; s) = r_k(lam / s) / s
        grad_scale = (
            (torch.diagonal(m, dim1=-2, dim2=-1).double() * dp_dscale).sum().to(scale.dtype)
        )
        return grad_a, grad_scale, None


def spectral_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Same values and gradients as :func:`iterative_pinv`, computed from the spectrum of a a^T."""
    return _SpectralPinv.apply(a, _pinv_scale(a), iterations)


class NystromAttention(nn.Module):
    """Multi-head self-attention approximated with segment-mean landmarks (Xiong et al., AAAI 2021).

    ``forward(x [n, dim])`` returns the output ``[n, dim]``, the first token's (CLS) attention row over the
    other tokens ``[heads, n-1]`` and their values ``[heads, n-1, dim_head]`` (MHIM's instance scores).
    With ``cls_only`` only the CLS output ``[1, dim]`` and the CLS row are computed (values: None):
    TransMIL's last layer needs nothing else (the row is its heatmap), and the landmark queries are then projected from segment means of ``x`` (the same numbers,
    since the projection is linear) instead of projecting every token's query.
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
            raise PipelineError("transmil", f"hidden_dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.dim_head = dim, heads, dim // heads
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

    def _heads(self, t: torch.Tensor, pad: int = 0) -> torch.Tensor:
        """``[rows, dim]`` -> ``[heads, pad + rows, dim_head]`` with ``pad`` zero rows first.

        The zero tokens let the sequence split into equal landmark segments (as the reference); to_qkv
        has no bias, so their q, k, v are zero too.
        """
        if pad:
            t = F.pad(t, (0, 0, pad, 0))
        return t.view(t.shape[0], self.heads, self.dim_head).transpose(0, 1)

    def forward(
        self, x: torch.Tensor, cls_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Under bf16 autocast the products with a sequence-length dimension and their softmaxes run in
        bfloat16 (as autocast runs any matmul); the landmark kernel, its pseudo-inverse and the products
        with it stay float32, where rounding would be amplified."""
        n, dim = x.shape
        m = self.landmarks
        pad = (-n) % m if n > m else 0
        w = self.to_qkv.weight
        if cls_only:
            k, v = (self._heads(t, pad) for t in F.linear(x, w[dim:]).chunk(2, dim=1))
            q = self._heads(F.linear(x[:1], w[:dim]))  # [h, 1, d]
            if n > m:
                x_means = F.pad(x, (0, 0, pad, 0)).view(m, -1, dim).mean(1)
                q_l = self._heads(F.linear(x_means, w[:dim])) * self.scale
        else:
            q, k, v = (self._heads(t, pad) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q * self.scale
        if n <= m:
            attn = softmax(q @ k.transpose(-1, -2))  # exact attention [h, n or 1, n]
            out = attn @ v
            cls_row = _at_least_fp32(attn[:, 0])
        else:
            seg = k.shape[1] // m
            k_l = k.view(self.heads, m, seg, -1).mean(2)
            if not cls_only:
                q_l = q.view(self.heads, m, seg, -1).mean(2)
            a1 = softmax(q @ k_l.transpose(-1, -2))  # [h, n + pad or 1, m]
            a3 = softmax(q_l @ k.transpose(-1, -2))  # [h, m, n + pad]
            a3v = a3 @ v  # [h, m, d]
            with torch.autocast(device_type=x.device.type, enabled=False):
                a2 = softmax(_at_least_fp32(q_l) @ _at_least_fp32(k_l).transpose(-1, -2))  # [h,m,m]
                z = spectral_pinv(a2, self.pinv_iterations)
                za3v = z @ a3v.to(z.dtype)
                row = (_at_least_fp32(a1[:, 0 if cls_only else pad]).unsqueeze(1) @ z).to(a3.dtype)
                cls_row = _at_least_fp32((row @ a3).squeeze(1))
            out = a1 @ za3v
        if cls_only:
            out = out + self._residual_at(v, pad)
        else:
            out = (out + self.res_conv(v.unsqueeze(0)).squeeze(0))[:, pad:]
        out = self.to_out(out.transpose(0, 1).reshape(out.shape[1], dim))
        if cls_only:
            return out, cls_row[:, pad + 1 :], None
        return out, cls_row[:, pad + 1 :], v[:, pad + 1 :]

    def _residual_at(self, v: torch.Tensor, position: int) -> torch.Tensor:
        """The depthwise residual convolution of ``v [h, L, d]`` at one sequence position -> ``[h, 1, d]``."""
        kernel = self.res_conv.weight.shape[2]
        window = F.pad(v, (0, 0, kernel // 2, kernel // 2))[:, position : position + kernel]
        return (self.res_conv.weight.view(self.heads, kernel, 1) * window).sum(1, keepdim=True)


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
        grid = torch.cat([x, x[: side * side - n]]).float()  # pad the square with the first tokens
        kernel = (
            self.proj.weight
            + F.pad(self.proj1.weight, (1, 1, 1, 1))
            + F.pad(self.proj2.weight, (2, 2, 2, 2))
        )
        kernel = kernel.clone()
        kernel[:, 0, 3, 3] += 1.0  # identity term
        bias = self.proj.bias + self.proj1.bias + self.proj2.bias
        img = grid.t().reshape(1, c, side, side)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = _DepthwiseConv2d.apply(img, kernel, bias)
        return out.reshape(c, side * side).t()[:n]


class TransMIL(MILModel):
    """Projection -> [CLS; instances] -> Nystrom layer -> PPEG -> Nystrom layer -> LayerNorm -> CLS -> Linear."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        hidden_dim: int,
        dropout: float,
        heads: int = 8,
        landmarks: int = 256,
        pinv_iterations: int = 6,
        attention_dropout: float = 0.1,
        ppeg: bool = True,
        activation: str = "gelu",
    ) -> None:
        super().__init__(in_dim, n_outputs)
        self.name = "transmil"
        dim = int(hidden_dim)
        self.hidden_dim = dim
        self.projection = make_projection(in_dim, [dim], activation, float(dropout), self.name)
        self.cls_token = nn.Parameter(torch.randn(1, dim))
        args = (dim, int(heads), int(landmarks), int(pinv_iterations), float(attention_dropout))
        self.norm1, self.attn1 = nn.LayerNorm(dim), NystromAttention(*args)
        self.ppeg = PPEG(dim) if ppeg else None
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
        z, last_cls_row, _ = self.attn2(self.norm2(x), cls_only=True)  # only the CLS output is used
        emb = self.norm(x[:1] + z)
        return {
            "embedding": emb,
            "attention": cls_row.mean(0),
            "cls_row": cls_row,
            "values": values,
            "last_cls_row": last_cls_row,  # [heads, N]: the last layer's CLS attention (heatmaps)
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
