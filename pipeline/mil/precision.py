"""Numeric setup of a MIL run: the training precision, seeding and deterministic algorithms.

Device choice and autocast live in :mod:`pipeline.device` (shared with feature extraction); this module
adds what only MIL training decides: when bf16 pays for a MIL model, and how a run is made repeatable.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from pipeline.device import native_bf16
from pipeline.errors import PipelineError

PRECISIONS = ("auto", "fp32", "bf16")
INPUT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# in_dim x hidden_dim from which bf16 autocast pays (1024-d WSI features x 512: 2**19)
BF16_MIN_PROJECTION = 2**17


def training_precision(
    name: str | None, device: torch.device, projection: int | None = None
) -> str:
    """``auto`` = bf16 autocast where it is a speed-up, else fp32.

    MIL training on WSI features is bound by the instance projection's matmuls; bf16 runs them about
    twice as fast where the hardware multiplies bfloat16 natively (AVX512-BF16 / AMX CPUs, bf16 GPUs),
    with the same accuracy on our benchmarks (BENCHMARKS.md). For small projections (``projection`` =
    in_dim x hidden_dim below ``BF16_MIN_PROJECTION``, e.g. the 166-d MIL benchmark sets) autocast's
    per-op casts cost more than they save, so ``auto`` stays fp32. The optimiser and its state, the
    loss, and the TransMIL landmark pseudo-inverse stay float32 in any case.
    """
    name = name or "auto"
    if name == "auto":
        big = projection is None or projection >= BF16_MIN_PROJECTION
        return "bf16" if big and native_bf16(device) else "fp32"
    if name not in PRECISIONS:
        raise PipelineError(
            "mil.precision", f"unknown precision {name!r}", f"Use {' | '.join(PRECISIONS)}."
        )
    return name


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (weights, bag order and masking all draw from these)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on CPU for the duration (restored afterwards)."""
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_before)
