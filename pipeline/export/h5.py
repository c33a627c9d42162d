"""Our zarr feature stores to and from the h5 layout CLAM and TRIDENT use, so features move both ways.

One h5 file per slide with two datasets, as CLAM's and TRIDENT's feature extraction write them:

* ``features``: ``[N, D]`` in the store's dtype (float16 by default), one row per patch;
* ``coords``: int32 ``[N, 2]``, level-0 top-left ``(x, y)`` of each patch, in the same order.

``coords`` carries the patch geometry in both tools' attribute names: TRIDENT's ``patch_size`` (side at
the target resolution), ``patch_size_level0``, ``level0_magnification``, ``target_magnification``,
``overlap``, ``level0_width``, ``level0_height``, ``name``; and CLAM's ``patch_level``, ``downsample``,
``level_dim``, ``downsampled_level_dim``. Magnifications are 10 / µm-per-px, as the rest of the
pipeline derives them. CLAM's ``patch_size`` means the side read at ``patch_level``; we write
``patch_level`` 0 with ``downsample`` = level-0 side / target side, so ``patch_size * downsample`` is
the level-0 side in both readings.

The file's root attribute ``wsi_mil`` holds the feature store's own attrs as JSON, so exporting then
importing gives back the same store; a file from CLAM or TRIDENT lacks it and its store's attrs are
built from the ``coords`` attributes (what they record; ``imported_from`` names the file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.store import atomic_path, open_store, to_jsonable, write_store

#: Root attribute holding our feature store's attrs (JSON), written by :func:`export_h5`.
OWN_ATTRS = "wsi_mil"


def _magnification(mpp: float | None) -> float | None:
    return None if not mpp else round(10.0 / float(mpp), 6)


def coords_attrs(store_attrs: dict[str, Any], n: int) -> dict[str, Any]:
    """The ``coords`` attributes (TRIDENT's and CLAM's names) from a feature store's attrs."""
    if "h5_coords_attrs" in store_attrs:  # imported from an h5 file: give back what it had
        return dict(store_attrs["h5_coords_attrs"])
    tiles = store_attrs.get("tiles") or {}
    missing = [k for k in ("patch_size", "level0_patch_size", "slide_size") if k not in tiles]
    if missing:
        raise PipelineError(
            store_attrs.get("slide_id", "feature store"),
            f"feature store lacks the tile geometry ({', '.join(missing)}) an h5 file records",
            "Export a store written by `wsi-mil extract`.",
        )
    size, side0 = int(tiles["patch_size"]), int(tiles["level0_patch_size"])
    width, height = (int(v) for v in tiles["slide_size"])
    down = side0 / size
    return {
        "patch_size": size,
        "patch_size_level0": side0,
        "level0_magnification": _magnification(tiles.get("slide_mpp")),
        "target_magnification": _magnification(tiles.get("target_mpp")),
        "overlap": int(tiles.get("overlap", 0)),
        "level0_width": width,
        "level0_height": height,
        "name": str(store_attrs.get("slide_id", "")),
        "patch_level": 0,
        "downsample": [down, down],
        "level_dim": [width, height],
        "downsampled_level_dim": [width, height],
        "n_patches": n,
    }


def export_h5(store: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write one feature store as a CLAM/TRIDENT h5 file (atomically)."""
    import h5py

    group = open_store(store)
    if "features" not in group or "coords" not in group:
        raise PipelineError(store, "not a feature store (no features/coords arrays)")
    attrs = dict(group.attrs)
    features = np.asarray(group["features"][...])
    coords = np.asarray(group["coords"][...])
    if features.shape[0] != coords.shape[0]:
        raise PipelineError(store, f"{features.shape[0]} feature rows but {coords.shape[0]} coords")
    final = Path(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=features)
        dset = h5.create_dataset("coords", data=coords)
        for key, value in coords_attrs(attrs, len(coords)).items():
            if value is not None:
                dset.attrs[key] = value
        h5.attrs[OWN_ATTRS] = json.dumps(to_jsonable(attrs), sort_keys=True)
    return final


def _plain(value: Any) -> Any:
    """An h5 attribute as a JSON value (numpy arrays and scalars, bytes)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attrs_from_coords(
    h5_attrs: dict[str, Any], path: Path, features: np.ndarray
) -> dict[str, Any]:
    """Feature store attrs for a file CLAM or TRIDENT wrote (only what its coords attrs say)."""
    mag0, mag = h5_attrs.get("level0_magnification"), h5_attrs.get("target_magnification")
    size = h5_attrs.get("patch_size")
    side0 = h5_attrs.get("patch_size_level0")
    if side0 is None and size is not None and "downsample" in h5_attrs:  # CLAM
        side0 = round(float(size) * float(np.ravel(h5_attrs["downsample"])[0]))
    width = h5_attrs.get("level0_width")
    height = h5_attrs.get("level0_height")
    if width is None and "level_dim" in h5_attrs and int(h5_attrs.get("patch_level", 0)) == 0:
        width, height = h5_attrs["level_dim"]
    tiles = {
        "patch_size": size,
        "level0_patch_size": side0,
        "slide_size": None if width is None else [int(width), int(height)],
        "slide_mpp": None if not mag0 else 10.0 / float(mag0),
        "target_mpp": None if not mag else 10.0 / float(mag),
        "overlap": h5_attrs.get("overlap", 0),
    }
    return {
        "slide_id": str(h5_attrs.get("name") or path.stem),
        "n_patches": int(features.shape[0]),
        "dim": int(features.shape[1]),
        "failed": False,
        "imported_from": str(path),
        "tiles": {k: v for k, v in tiles.items() if v is not None},
        "h5_coords_attrs": h5_attrs,
    }


def import_h5(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a zarr feature store from a CLAM/TRIDENT h5 file (ours or theirs), atomically."""
    import h5py

    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise PipelineError(path, f"not a readable h5 file ({err})") from err
    with h5:
        missing = [k for k in ("features", "coords") if k not in h5]
        if missing:
            raise PipelineError(
                path,
                f"h5 file has no {' or '.join(missing)} dataset",
                "Give a CLAM/TRIDENT feature file (datasets `features` and `coords`).",
            )
        features = np.asarray(h5["features"][...])
        coords = np.asarray(h5["coords"][...])
        h5_attrs = {k: _plain(v) for k, v in h5["coords"].attrs.items()}
        own = h5.attrs.get(OWN_ATTRS)
    if features.ndim == 3 and features.shape[0] == 1:  # some tools keep a batch axis
        features = features[0]
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise PipelineError(
            path,
            f"features {features.shape} and coords {coords.shape} do not pair up as [N, D] and [N, 2]",
        )
    if not np.issubdtype(coords.dtype, np.integer):
        raise PipelineError(path, f"coords are {coords.dtype}, not integer level-0 pixels")
    attrs = (
        json.loads(_plain(own)) if own is not None else _attrs_from_coords(h5_attrs, path, features)
    )
    return write_store(out, {"features": features, "coords": coords.astype(np.int32)}, attrs)
