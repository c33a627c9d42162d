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

    from pipeline.errors import FileSystemError, first_line, io_error
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
            f"could not be written ({full}: {_free_text(free)}; PyTorch said: {first_line(err)})",
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
        raise PipelineError(
            path, f"cannot read {what} ({load_error_cause(err, path)})", remedy
        ) from err


def load_error_cause(err: BaseException, path: str | os.PathLike | None = None) -> str:
    """Why ``torch.load(weights_only=True)`` of ``path`` failed, in words that never suggest unsafe loading.

    Decided by the exception's type and by asking torch which globals the file needs
    (``torch.serialization.get_unsafe_globals_in_checkpoint``), not by reading torch's message: a
    refused pickle is an ``UnpicklingError`` whose own text is advice, and the unpickler's reason is the
    exception it replaced (``__context__``).
    """
    import pickle

    from pipeline.errors import first_line

    if isinstance(err, pickle.UnpicklingError):
        unsafe = _unsafe_globals(path)
        if unsafe:
            return f"it holds Python objects, not only tensors: {unsafe[0]}"
        inner = err.__context__ if isinstance(err.__context__, pickle.UnpicklingError) else None
        detail = first_line(inner) if inner is not None else ""
        if "weights_only" in detail:  # never relay PyTorch's advice to load unsafely
            detail = ""
        return f"not a PyTorch tensor file: {detail[:120] or 'unreadable pickle'}"
    if isinstance(err, EOFError) or not str(err).strip():
        return "the file is empty or cut short"
    line = first_line(err).split(". ", 1)[0]  # PyTorch appends paragraphs of advice
    if "weights_only" in line:  # never relay PyTorch's advice to load unsafely
        return f"not a PyTorch tensor file ({type(err).__name__})"
    return line


def _unsafe_globals(path: str | os.PathLike | None) -> list[str]:
    """The classes and functions a ``torch.save`` zip file would have to import (``[]`` when it
    is not one, or this torch cannot say)."""
    import torch

    ask = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if path is None or ask is None:
        return []
    try:
        return list(ask(str(path)))
    except Exception:  # noqa: BLE001 - not a zip checkpoint: nothing to report
        return []


def _free_bytes(folder: Path) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _free_text(free: int | None) -> str:
    return "free space unknown" if free is None else f"{free / 2**20:.1f} MiB free there"
