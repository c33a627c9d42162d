"""Feature bags for MIL: find and read per-slide feature stores, keep them in memory, build bags.

A features directory holds one store per slide, named by the slide id (the file stem):

* ``{slide}.zarr``  — ours (``features`` [N,D], ``coords`` [N,2]; docs/architecture.md, "Data contracts");
* ``{slide}.h5``    — CLAM / TRIDENT (datasets ``features`` and ``coords``; a leading batch axis of 1 is dropped);
* ``{slide}.pt``    — a tensor [N,D] (CLAM's ``pt_files``) or a dict with ``features`` (and ``coords``).

A CLAM/TRIDENT output folder with ``h5_files/`` or ``pt_files/`` inside can be given directly. Features
are read once and kept in memory as float16 (half the memory of float32; a slide whose values overflow
float16 stays float32) and cast one bag at a time to the training dtype (float32, or bfloat16 under
``mil.precision: bf16``). When they would not fit in half the free memory, bags are read from disk at
each use instead (slower, logged once).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.checkpoints import load_error_cause
from pipeline.errors import PipelineError
from pipeline.log import get_logger

SUFFIXES = {".zarr": "zarr", ".h5": "h5", ".hdf5": "h5", ".pt": "pt", ".pth": "pt"}
FP16_MAX = float(np.finfo(np.float16).max)
log = get_logger("mil.data")


def _scan(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in SUFFIXES:
            continue
        slide = p.name[: -len(p.suffix)]
        if slide in found:
            raise PipelineError(
                directory,
                f"two feature stores for slide '{slide}': {found[slide].name} and {p.name}",
                "Keep one store per slide id (the file stem).",
            )
        found[slide] = p
    return found


def find_feature_files(directory: str | os.PathLike) -> dict[str, Path]:
    """``slide_id -> path`` of every feature store in ``directory`` (or its CLAM/TRIDENT sub-folders)."""
    d = Path(directory)
    if not d.is_dir():
        raise PipelineError(
            d, "features directory not found", "Run the extract stage or pass --features DIR."
        )
    found = _scan(d)
    if not found:
        for sub in ("h5_files", "pt_files"):
            if (d / sub).is_dir():
                found = _scan(d / sub)
                if found:
                    break
    return found


def _squeeze(arr: np.ndarray, path: Path, name: str, ndim: int = 2) -> np.ndarray:
    if arr.ndim == ndim + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise PipelineError(
            path,
            f"'{name}' has shape {arr.shape}, expected {ndim} dimensions",
            "Re-extract the features.",
        )
    return arr


def read_feature_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """``(features [N,D], coords [N,2] or None)`` of one store, in the stored dtype."""
    p = Path(path)
    kind = SUFFIXES.get(p.suffix.lower())
    try:
        if kind == "zarr":
            from pipeline.store import open_store

            group = open_store(p)
            if "features" not in group:
                raise PipelineError(
                    p, "store has no 'features' array", "Re-run feature extraction."
                )
            feats = np.asarray(group["features"][...])
            coords = np.asarray(group["coords"][...]) if "coords" in group else None
        elif kind == "h5":
            import h5py

            with h5py.File(p, "r") as f:
                if "features" not in f:
                    raise PipelineError(
                        p, "HDF5 file has no 'features' dataset", "Expected CLAM/TRIDENT layout."
                    )
                feats = np.asarray(f["features"][...])
                coords = np.asarray(f["coords"][...]) if "coords" in f else None
        elif kind == "pt":
            obj = torch.load(p, map_location="cpu", weights_only=True)
            coords = None
            if isinstance(obj, Mapping):
                if "features" not in obj:
                    raise PipelineError(
                        p, "dict has no 'features' entry", "Save {'features': tensor} or a tensor."
                    )
                coords = obj.get("coords")
                coords = None if coords is None else torch.as_tensor(coords).numpy()
                obj = obj["features"]
            t = torch.as_tensor(obj)
            feats = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        else:
            raise PipelineError(
                p, "unknown feature file type", f"Use one of {', '.join(SUFFIXES)}."
            )
    except PipelineError:
        raise
    except Exception as err:  # damaged files: h5py/torch/zarr raise many types
        cause = f"cannot read features ({load_error_cause(err, p)})"  # never torch's unsafe advice
        raise PipelineError(p, cause, "Re-extract this slide.") from err
    feats = _squeeze(feats, p, "features")
    if coords is not None:
        coords = _squeeze(np.asarray(coords), p, "coords")
    return feats, coords


def read_finite(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, int]:
    """:func:`read_feature_file` without the patches whose features hold NaN or Inf; their count.

    The one policy for every command that reads features (train, cv, predict): a non-finite patch is
    dropped (its row of coords too) and the slide kept with the rest; a slide with no finite patch is
    left out like an empty one. NaN would otherwise make the loss NaN and give blank scores.
    """
    feats, coords = read_feature_file(path)
    finite = np.isfinite(feats).all(axis=1) if feats.size else np.ones(len(feats), bool)
    if finite.all():
        return feats, coords, 0
    keep = coords is not None and len(coords) == len(feats)
    return feats[finite], (coords[finite] if keep else coords), int((~finite).sum())


def _to_tensor(feats: np.ndarray, slide: str) -> torch.Tensor:
    """float16 tensor unless the values overflow float16 (then float32, with a warning)."""
    t = torch.from_numpy(np.ascontiguousarray(feats))
    if t.dtype == torch.float16:
        return t
    t = t.float()
    if t.numel() and t.abs().max().item() > FP16_MAX:
        log.warning("slide %s: feature values exceed float16 range; kept as float32", slide)
        return t
    return t.half()


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class FeatureBank:
    """Feature matrices of a set of slides, read once; ``get(slide)`` gives float16/32 ``[N, D]``.

    Slides asked for but absent from the directory, and stores with 0 patches, are reported one line each
    and left out (``missing`` / ``empty``); stores in the directory that were not asked for are reported
    as ``unlabelled`` and ignored.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        self._tensors: dict[str, torch.Tensor] = dict(tensors or {})
        self._paths: dict[str, Path] = {}
        self._casts: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.lazy = False
        self.cache_casts = True  # keep a bfloat16 copy beside float16 (bf16 training); off if tight
        self.missing: list[str] = []
        self.empty: list[str] = []
        self.unlabelled: list[str] = []
        self.dim: int | None = None
        if self._tensors:
            self.dim = int(next(iter(self._tensors.values())).shape[1])

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> FeatureBank:
        """A bank over in-memory matrices (tests, benchmarks, callers with their own features)."""
        return cls({k: _to_tensor(np.asarray(v), k) for k, v in arrays.items()})

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        slide_ids: Iterable[str] | None = None,
        memory_fraction: float = 0.5,
    ) -> FeatureBank:
        """Read the stores of ``slide_ids`` (all stores when None) from ``directory``."""
        bank = cls()
        files = find_feature_files(directory)
        wanted = sorted(files) if slide_ids is None else sorted(dict.fromkeys(map(str, slide_ids)))
        for slide in wanted:
            if slide not in files:
                bank.missing.append(slide)
                log.warning(
                    "slide %s: in the labels but no feature store in %s; left out", slide, directory
                )
        bank.unlabelled = sorted(set(files) - set(wanted))
        for slide in bank.unlabelled:
            log.info("slide %s: feature store has no label; ignored", slide)
        present = [s for s in wanted if s in files]
        avail = _available_memory()
        need = sum(_nbytes_fp16(files[s]) for s in present)
        if avail is not None and 2 * need > memory_fraction * avail:
            bank.cache_casts = False  # bf16 training casts each bag at use instead
        if avail is not None and need > memory_fraction * avail:
            bank.lazy = True
            log.warning(
                "features need %.1f GB in memory, %.1f GB free: reading bags from disk at each use",
                need / 1e9,
                avail / 1e9,
            )
        n_loaded = 0
        for slide in present:
            feats, _, bad = read_finite(files[slide])
            if bad:
                kept = "left out" if feats.shape[0] == 0 else f"dropped, {feats.shape[0]} kept"
                msg = "slide %s: %d patch(es) with NaN/Inf features in %s; %s"
                log.warning(msg, slide, bad, files[slide], kept)
            if feats.shape[0] == 0:
                bank.empty.append(slide)
                if not bad:
                    log.warning("slide %s: feature store has 0 patches; left out", slide)
                continue
            bank._check_dim(slide, feats.shape[1], files[slide])
            bank._paths[slide] = files[slide]
            if not bank.lazy:
                bank._tensors[slide] = _to_tensor(feats, slide)
            n_loaded += 1
        total = sum(t.numel() * t.element_size() for t in bank._tensors.values())
        log.info(
            "features: %d slide(s) ready from %s (%d missing, %d empty, %.1f MB in memory)",
            n_loaded,
            directory,
            len(bank.missing),
            len(bank.empty),
            total / 1e6,
        )
        return bank

    def _check_dim(self, slide: str, dim: int, path: Path) -> None:
        if self.dim is None:
            self.dim = int(dim)
        elif int(dim) != self.dim:
            raise PipelineError(
                path,
                f"slide {slide} has {dim}-d features, other slides {self.dim}-d",
                "Use stores from one encoder in a features directory.",
            )

    @property
    def slides(self) -> list[str]:
        return sorted(self._paths) if self._paths else sorted(self._tensors)

    def __contains__(self, slide: str) -> bool:
        return slide in self._tensors or slide in self._paths

    def get(self, slide: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The slide's ``[N, D]`` features: as stored (float16 in memory), or in ``dtype``.

        A bfloat16 request is cast once and kept beside the float16 original (when memory allows):
        casting float16 to bfloat16 costs as much per bag as a tenth of an AB-MIL training step, and the
        float16 original stays exact for float32 runs in the same process.
        """
        if slide in self._tensors:
            t = self._tensors[slide]
        elif slide in self._paths:
            t = _to_tensor(read_finite(self._paths[slide])[0], slide)
        else:
            raise KeyError(slide)
        if dtype is None or t.dtype == dtype:
            return t
        if dtype != torch.bfloat16 or not self.cache_casts or slide not in self._tensors:
            return t.to(dtype)
        key = (slide, dtype)
        if key not in self._casts:
            self._casts[key] = t.float().to(dtype)  # via float32: 2x faster than a direct cast
        return self._casts[key]

    def coords(self, slide: str) -> np.ndarray | None:
        """Patch coordinates of the slide from its store (None when the store has none)."""
        return read_finite(self._paths[slide])[1] if slide in self._paths else None


def _nbytes_fp16(path: Path) -> int:
    """Cheap size estimate (float16) from the store's metadata, without reading the data."""
    try:
        kind = SUFFIXES.get(path.suffix.lower())
        if kind == "zarr":
            from pipeline.store import open_store

            return int(np.prod(open_store(path)["features"].shape)) * 2
        if kind == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                return int(np.prod(f["features"].shape)) * 2
        return path.stat().st_size // 2 if path.stat().st_size else 0
    except Exception:  # the real read reports problems properly
        return 0


@dataclass
class Bag:
    """One MIL bag: a slide (classification) or all slides of a case (survival), plus its target.

    ``target`` is task-specific (class index; or ``(bin, time, event)``). Features are concatenated over
    ``slide_ids`` in order and returned as float32 on request.
    """

    bag_id: str
    case_id: str
    slide_ids: tuple[str, ...]
    target: Any
    bank: FeatureBank = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def features(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[N, D]`` in ``dtype`` (one cast from the in-memory float16; bfloat16 for bf16 training)."""
        parts = [self.bank.get(s, dtype) for s in self.slide_ids]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
