"""Checkpoint files: compare a state dict with a model's before loading, load and save safely.

Both encoder weights and MIL teacher checkpoints must fit exactly: a partial load would give a silently
half-random model, which is the failure users of CLAM-style scripts meet most often and notice last.
Loading is always ``weights_only=True`` and a bad file is one line that never suggests otherwise;
saving is atomic and a full disk is one line naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def state_dict_problems(
    own: Mapping[str, Any],
    state: Mapping[str, Any],
    ignore: Callable[[str], bool] = lambda key: False,
) -> list[str]:
    """What stops ``state`` from loading into a model whose state dict is ``own`` (empty when it fits).

    ``ignore`` names checkpoint keys of parts a model drops on purpose (a classifier head, say);
    BatchNorm's ``num_batches_tracked`` counters may be absent.
    """
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not ignore(k)]
    mismatched = [
        f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[0]}")
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
    return problems


def save_tensors(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically; a failed write is one line naming the file.

    PyTorch reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos ...``, which never mentions the disk; that becomes a :class:`FileSystemError` saying so.
    """
    import torch

    from pipeline.errors import FileSystemError, io_error
    from pipeline.store import atomic_path

    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as err:
        raise io_error(err, path) from err
    except RuntimeError as err:
        free = _free_bytes(Path(path).parent)
        full = (
            "the disk is full" if free is not None and free < (64 << 20) else "the disk may be full"
        )
        raise FileSystemError(
            path,
            f"could not be written ({full}: {_free_text(free)}; PyTorch said: {_first_line(err)})",
            "Free space there (df -h) or write the results elsewhere, then re-run.",
        ) from err


def load_tensors(path: str | os.PathLike, what: str, remedy: str) -> Any:
    """``torch.load(path, weights_only=True)``; a file that cannot be read is one line naming it.

    PyTorch's own message for a file that is not a plain-tensor checkpoint advises loading it with
    ``weights_only=False``, which runs whatever code the file holds; we never pass that on.
    """
    import torch

    from pipeline.errors import PipelineError

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise PipelineError(path, f"cannot read {what} ({load_error_cause(err)})", remedy) from err


def load_error_cause(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in words that never suggest unsafe loading."""
    text = str(err).strip()
    if "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        detail = next((line.strip() for line in detail if line.strip()), "")
        if detail.startswith("Unsupported global"):
            name = detail.split("GLOBAL", 1)[-1].split()[0] if "GLOBAL" in detail else "?"
            return f"it holds Python objects, not only tensors: {name}"
        return f"not a PyTorch tensor file: {detail[:120] or 'unreadable pickle'}"
    if isinstance(err, EOFError) or not text:
        return "the file is empty or cut short"
    line = _first_line(err).split(". ", 1)[0]  # PyTorch appends paragraphs of advice
    if "weights_only" in line:  # never relay PyTorch's advice to load unsafely
        return f"not a PyTorch tensor file ({type(err).__name__})"
    return line


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _free_bytes(folder: Path) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _free_text(free: int | None) -> str:
    return "free space unknown" if free is None else f"{free / 2**20:.1f} MiB free there"
