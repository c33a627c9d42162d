"""What a published store's chunk files must be, checked without zarr: the sizes recorded when a
store is published tell a missing or truncated chunk, which zarr would read as zeros. Standard
library only, so the fast per-slide jobs (``staging``) and ``store`` share it without importing each
other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHUNKS_ATTR = "chunk_bytes"  # {chunk file relative to the store: bytes}, recorded when published


def chunk_sizes(store: Path) -> dict[str, int]:
    """The size of every chunk file of a zarr store (every file but metadata), for its attributes."""
    root = Path(store)
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "zarr.json" and not p.name.startswith(".")
    }


def damage(store: Path, attrs: dict[str, Any]) -> str | None:
    """What is wrong with the chunk files of a published store (one missing, or not the size it was
    written with: truncated or overwritten), or None. Zarr reads a missing chunk as zeros and some
    damaged chunks decode; only the sizes recorded at publication tell. Stores published before
    this record was kept are not checked."""
    recorded = attrs.get(CHUNKS_ATTR)
    if not isinstance(recorded, dict):
        return None
    for name, size in sorted(recorded.items()):
        try:
            actual = (Path(store) / name).stat().st_size
        except OSError:
            return f"is damaged: its chunk {name} is missing"
        if actual != size:
            return f"is damaged: its chunk {name} has {actual} bytes, {size} were written"
    return None
