"""sha256 fingerprints of weight files, hashed once per (path, size, mtime) across processes, so a
feature store names the exact weights that made it without every job re-reading gigabytes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipeline.log import get_logger
from pipeline.weights_hub import hf_home


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_cache_path() -> Path:
    """``$WSI_MIL_FINGERPRINT_CACHE``, else ``wsi-mil/weights-sha256.json`` in the Hugging Face home
    (``$HF_HOME``, default ``~/.cache/huggingface``): next to the weights it describes."""
    explicit = os.environ.get("WSI_MIL_FINGERPRINT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return hf_home() / "wsi-mil" / "weights-sha256.json"


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a weights file, hashed once per (resolved path, size, mtime) across processes.

    Every extraction job would otherwise re-read a 1-4 GB checkpoint just to name it. A file that is
    replaced or touched changes size or mtime and is hashed again. The cache is a small JSON file
    written atomically; an unreadable or unwritable cache only costs the hash.
    """
    real = Path(path).resolve()
    stat = real.stat()
    key = str(real)
    entries = _read_cache()
    entry = entries.get(key)
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    digest = sha256_file(real)
    entries = _read_cache()  # another job may have added entries meanwhile
    entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    _write_cache(entries)
    return digest


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(fingerprint_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entries: dict[str, Any]) -> None:
    target = fingerprint_cache_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=0, sort_keys=True))
        os.replace(tmp, target)
    except OSError as err:  # read-only home: hashing again next time is the only cost
        get_logger("features").debug("fingerprint cache %s not written (%s)", target, err)
