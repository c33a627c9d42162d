"""What a resumable output was made from, so a re-run never reuses results of other inputs or settings.

``wsi-mil cv`` keeps ``splits.csv`` and every finished fold so an interrupted run resumes. Reusing them
is only right when the run asks for the same thing: the same tables (by content), folds, seed,
validation fraction, MIL settings and slides. Each reusable output gets a ``*.made-from.json`` record
beside it, written before the output itself; a later run compares its own record with it and, on any
difference, stops with one line listing what changed (or, without a record, saying it cannot tell)
instead of reporting the old results as the new run's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.store import write_json


def file_digest(path: str | os.PathLike | None) -> str | None:
    """sha256 of a table's bytes (None when no table is given)."""
    if path is None:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_path(output: str | os.PathLike) -> Path:
    out = Path(output)
    return out.with_name(f"{out.name}.made-from.json")


def check_or_record(
    output: str | os.PathLike, record: Mapping[str, Any], reused: bool, folder: str | os.PathLike
) -> None:
    """Refuse to reuse ``output`` unless it was made from ``record``; record it when starting afresh.

    ``reused`` says whether there is something at ``output`` that the caller would keep. Without
    anything to reuse the record is (re)written, so the run that follows is the one it describes.
    ``folder`` is what the user deletes to start over (the whole run's output folder).
    """
    path = record_path(output)
    remedy = f"Use a new --output folder, or delete {folder} to start over."
    current = json.loads(json.dumps(dict(record)))  # the form it has once read back
    if not reused:
        write_json(path, current)
        return
    if not path.is_file():
        raise PipelineError(
            output,
            "exists, with no record of the inputs and settings it was made from",
            remedy,
        )
    previous = json.loads(path.read_text())
    changes = differences(previous, current)
    if changes:
        raise PipelineError(
            output,
            f"was made from other inputs or settings ({'; '.join(changes[:4])}"
            f"{'; ...' if len(changes) > 4 else ''}) and would be reused",
            remedy,
        )


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key old → new`` for every leaf that differs (tables and slide lists: ``changed``)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(differences(a, b, f"{name}."))
        elif a != b:
            long = isinstance(a, list | str) and len(json.dumps(a)) > 40
            out.append(f"{name} changed" if long else f"{name} {_show(a)} → {_show(b)}")
    return out


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value, ensure_ascii=False)
