"""Stores a group extraction job leaves for the workflow to move into place, checked without zarr.

A group job writes each slide's feature store to a staging path; the workflow's per-slide job then
only has to move it to ``results/features/...``. That job runs once per slide, so it must start in a
fraction of a second: it reads the two stores' attributes straight from their ``zarr.json`` (zarr
v3 keeps a group's attributes there) instead of importing zarr and numpy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def store_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the zarr v3 group at ``path``; None when it is not a published store."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("attributes", {}) if meta.get("node_type") == "group" else None


def answers(attrs: dict[str, Any] | None, tiles_path: Path, requested: dict[str, Any]) -> bool:
    """True when a feature store's ``attrs`` say it was made from the tile store at ``tiles_path``
    (same attributes, so the same cut of the same slide) for the same request."""
    if attrs is None or attrs.get("requested") != requested:
        return False
    tiles = store_attrs(tiles_path)
    return (
        tiles is not None
        and attrs.get("tiles_store") == str(Path(tiles_path).resolve())
        and attrs.get("tiles") == tiles
    )


def publish_staged(staged: Path, out: Path, tiles_path: Path, requested: dict[str, Any]) -> bool:
    """Move the store a group job left at ``staged`` to ``out`` when it answers this request;
    False (nothing moved) otherwise. ``out`` is replaced only once the new store is in place."""
    if not answers(store_attrs(staged), tiles_path, requested):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        from pipeline.store import atomic_path

        with atomic_path(out) as tmp:
            os.replace(staged, tmp)
    else:
        os.replace(staged, out)
    return True
