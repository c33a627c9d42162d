"""Fixtures for the feature stage: real slides, small tile stores, and a hub with no network.

Every test runs with HF_HUB_OFFLINE=1, an empty HF_HOME in tmp and no token, so nothing can reach
the network or a developer's real Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.slides import open_slide, patch_geometry
from pipeline.store import write_store

SLIDES = Path(__file__).resolve().parents[1] / "data" / "slides"
CMU = SLIDES / "CMU-1-Small-Region.svs"  # 2220×2967, 0.499 µm/px, single level
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"  # 4443×3567, 2 levels, JPEG 2000, no MPP

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def offline_hub(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return home


def make_tiles(
    path: Path,
    slide_path: Path = CMU,
    coords=None,
    target_mpp: float = 0.5,
    patch_size: int = 256,
    slide_mpp: float | None = None,
    **extra,
) -> Path:
    """A tile store as `wsi-mil tile` writes it (coords + geometry attrs) for chosen coordinates."""
    with open_slide(slide_path) as slide:
        mpp = slide_mpp or slide.metadata_mpp()
        geometry = patch_geometry(slide, mpp, target_mpp, patch_size, 0.1)
        attrs = {
            "slide": str(slide_path),
            "slide_size": list(slide.dimensions),
            "reader": slide.reader,
            **geometry.as_attrs(),
            "failed": False,
            **extra,
        }
    coords = np.zeros((0, 2), np.int32) if coords is None else np.asarray(coords, np.int32)
    attrs["n_patches"] = len(coords)
    return write_store(path, {"coords": coords}, attrs)


# Patches on tissue of CMU-1-Small-Region (level-0 top-left), deliberately not in raster order.
CMU_COORDS = [(1024, 1024), (256, 1536), (1536, 512), (768, 2048), (1280, 1792)]


@pytest.fixture
def tile_store():
    """``tile_store(path, slide_path=CMU, coords=None, target_mpp=0.5, patch_size=256, ...)``."""
    return make_tiles


@pytest.fixture
def cmu() -> Path:
    return CMU


@pytest.fixture
def tcga() -> Path:
    return TCGA


@pytest.fixture
def cmu_coords() -> np.ndarray:
    return np.asarray(CMU_COORDS, np.int32)


@pytest.fixture
def cmu_tiles(tmp_path) -> Path:
    return make_tiles(tmp_path / "tiles.zarr", CMU, CMU_COORDS)
