"""Where torch computes and at which precision: one place for the choices extraction and MIL share.

``resolve_device`` turns ``auto|cpu|cuda[:k]`` into a device with one clear error when CUDA is asked
for but absent. ``autocast_context`` wraps a forward pass in ``fp32`` (no autocast), ``bf16`` or
``fp16`` autocast. ``native_bf16`` says whether the hardware multiplies bfloat16 natively (CUDA with
bf16 support; a CPU with AVX512-BF16 or AMX), where bf16 matmuls run about twice as fast as fp32;
elsewhere bf16 is emulated and slower, so ``auto`` choices fall back to fp32 there.
``resolve_precision`` is the one rule that turns a configured precision (``PRECISIONS``) into the one
to run, for extraction and MIL training alike; ``shard_devices`` lists the devices a group of slides
is spread over (one worker process each).
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


# --- one precision policy ------------------------------------------------------------------------

#: Every precision name a config may give; a stage narrows it with ``allowed`` (MIL has no fp16).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_precision(name: str, where: str, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """``name`` if it is one of ``allowed``, else one clear error naming ``where`` it came from."""
    if name not in allowed:
        raise PipelineError(where, f"unknown precision {name!r}", f"Use {' | '.join(allowed)}.")
    return name


def resolve_precision(
    name: str,
    device: Any,
    preferred: str,
    where: str = "precision",
    allowed: tuple[str, ...] = PRECISIONS,
    cpu_autocast: bool = False,
) -> str:
    """The autocast precision to run, the one rule every stage uses.

    An explicit name is taken as given (after checking it is ``allowed``). ``auto`` = the stage's
    ``preferred`` precision where the hardware runs it natively: on CUDA (bf16 → fp16 on GPUs
    without bf16, or fp32 when the stage does not allow fp16); on CPU only with ``cpu_autocast`` and
    native bf16 (extraction keeps fp32 on CPU: autocast rarely pays there and changes results; MIL
    training opts in). Extraction passes the encoder's preference; MIL passes bf16 when its
    projection is big enough to gain, else fp32.
    """
    check_precision(name, where, allowed)
    if name != "auto":
        return name
    if preferred == "fp32":
        return "fp32"
    if device.type == "cuda":
        if preferred == "bf16" and not native_bf16(device):
            return "fp16" if "fp16" in allowed else "fp32"
        return preferred
    if cpu_autocast and preferred == "bf16" and native_bf16(device):
        return "bf16"
    return "fp32"


def device_name(device: Any) -> str:
    """The device as recorded in provenance: ``cpu`` or ``cuda (<GPU model>)``."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def shard_devices(spec: str | None) -> list[str]:
    """Devices to shard a group of slides over, one worker process each.

    ``cpu,cpu`` (a comma list) is taken as written (CPU processes stand in for GPUs in tests);
    ``cuda``/``auto`` with several visible GPUs gives ``cuda:0 … cuda:k``; anything else is one
    device, run in the calling process.
    """
    spec = spec or "auto"
    if "," in spec:
        return [d.strip() for d in spec.split(",") if d.strip()]
    if spec in ("auto", "cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count > 1:
            return [f"cuda:{k}" for k in range(count)]
    return [spec]
