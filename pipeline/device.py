"""Where torch computes and at which precision: one place for the choices extraction and MIL share.

``resolve_device`` turns ``auto|cpu|cuda[:k]`` into a device with one clear error when CUDA is asked
for but absent. ``autocast_context`` wraps a forward pass in ``fp32`` (no autocast), ``bf16`` or
``fp16`` autocast. ``native_bf16`` says whether the hardware multiplies bfloat16 natively (CUDA with
bf16 support; a CPU with AVX512-BF16 or AMX), where bf16 matmuls run about twice as fast as fp32;
elsewhere bf16 is emulated and slower, so ``auto`` choices fall back to fp32 there.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pipeline.errors import PipelineError

AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def resolve_device(name: str | None = "auto") -> Any:
    """``auto`` (or None) = CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    import torch

    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(
            f"--device {name}",
            "no CUDA GPU is visible to PyTorch",
            "Use --device cpu (or auto), or run on a GPU node (CUDA_VISIBLE_DEVICES, a CUDA build "
            "of torch).",
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise PipelineError(f"--device {name}", "unknown device", "Use auto, cpu or cuda.")
    return torch.device(name)


def native_bf16(device: Any) -> bool:
    """True when ``device`` multiplies bfloat16 in hardware (so bf16 autocast is a speed-up)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return True
    return False


def autocast_context(precision: str, device: Any) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16``/``fp16``; nothing for ``fp32``."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in AUTOCAST_DTYPES:
        raise PipelineError(
            "precision", f"unknown precision {precision!r}", "Use fp32, bf16 or fp16."
        )
    dtype = getattr(torch, AUTOCAST_DTYPES[precision])
    return torch.autocast(device_type=device.type, dtype=dtype)
