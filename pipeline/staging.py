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

from pipeline.chunks import damage


def store_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the zarr v3 group at ``path``; None when it is not a published store."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("attributes", {}) if meta.get("node_type") == "group" else None


def request(encoder: str, weights: object, precision: str, dtype: str) -> dict[str, Any]:
    """What a feature store is asked to contain (not how it is computed), as its ``requested``
    attribute records it: the one definition the extractor, the per-slide move and the workflow's
    parse-time check compare."""
    return {"encoder": encoder, "weights": str(weights), "precision": precision, "dtype": dtype}


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


def why_not_reusable(store: Path, tiles_path: Path, requested: dict[str, Any]) -> str | None:
    """Why the published feature store at ``store`` does not answer this request, or None when it does.

    Checked by the workflow when it parses, so a store that was damaged or replaced on disk (its
    ``zarr.json`` gone or unreadable, a chunk truncated or gone, a store of another encoder or other
    weights renamed into place, a store of another cut of the slide) is recomputed instead of read as this run's.
    Snakemake cannot tell: it sees a folder newer than its inputs. Unlike :func:`answers` the tile
    store's path is not compared, so a results folder that was moved or copied stays valid.
    """
    attrs = store_attrs(store)
    if attrs is None:
        return "is not a complete zarr store (no readable zarr.json)"
    if broken := damage(store, attrs):
        return broken
    made = attrs.get("requested")
    if not isinstance(made, dict):
        return "records no request it was made for (encoder, weights, precision, dtype)"
    changed = [
        f"{k} {made.get(k)!r}, this run {v!r}" for k, v in requested.items() if made.get(k) != v
    ]
    if changed:
        return "was made for another request (" + "; ".join(changed) + ")"
    if attrs.get("tiles") != store_attrs(tiles_path):
        return f"was made from another tiling of the slide than {tiles_path}"
    return None


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
