"""Synthetic feature bags with a planted signal, written in every store format the MIL stage reads.

Positive bags hide a few "tumour" instances shifted along one direction among many noise instances;
survival cases get a tumour burden (fraction of shifted instances) that sets their hazard, so a model that
finds the tumour instances ranks cases by risk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

torch.set_num_threads(1)


def planted_bags(
    n_bags: int = 60,
    dim: int = 64,
    seed: int = 0,
    n_min: int = 20,
    n_max: int = 50,
    shift: float = 4.0,
    tumour_fraction: float = 0.1,
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """``(slide -> [N, dim] float32, labels slide_id,case_id,label)``.

    Slides 8k and 8k+1 share a case (one negative, one positive slide, as a tumour and a normal block of
    one patient); the other slides are cases of their own.
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    arrays, rows = {}, []
    for i in range(n_bags):
        label = i % 2
        n = int(rng.integers(n_min, n_max + 1))
        x = rng.normal(size=(n, dim))
        if label:
            k = max(1, int(round(tumour_fraction * n)))
            x[rng.choice(n, k, replace=False)] += shift * direction
        slide = f"slide{i:03d}"
        case = f"case{i // 2:03d}" if i % 8 < 2 else f"case{i:03d}b"  # some cases with two slides
        arrays[slide] = x.astype(np.float32)
        rows.append((slide, case, label))
    labels = pd.DataFrame(rows, columns=["slide_id", "case_id", "label"])
    return arrays, labels


def survival_bags(
    n_cases: int = 80,
    dim: int = 32,
    seed: int = 0,
    shift: float = 4.0,
    censor_fraction: float = 0.3,
) -> tuple[dict[str, np.ndarray], pd.DataFrame, pd.DataFrame, np.ndarray]:
    """``(slide arrays, survival case_id,time,event, slides slide_id,case_id, burden per case)``.

    Burden b = fraction of tumour instances: 0 for ~30 % of cases (no tumour), else U(0.05, 0.4); log time = log 100 - 8 b + 0.3 noise (an
    accelerated-failure-time model: higher burden dies sooner); about ``censor_fraction`` of cases are
    censored at a uniform earlier time.
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    arrays, surv, slides, burdens = {}, [], [], []
    for c in range(n_cases):
        case = f"case{c:03d}"
        burden = 0.0 if rng.random() < 0.3 else rng.uniform(0.05, 0.4)
        burdens.append(burden)
        for s in range(1 + (c % 3 == 0)):  # every third case has two slides
            n = int(rng.integers(20, 41))
            x = rng.normal(size=(n, dim))
            k = int(round(burden * n))
            if k:
                x[rng.choice(n, k, replace=False)] += shift * direction
            slide = f"{case}_s{s}"
            arrays[slide] = x.astype(np.float32)
            slides.append((slide, case))
        t = 100 * np.exp(-8 * burden + 0.3 * rng.normal())
        event = int(rng.random() >= censor_fraction)
        if not event:
            t = t * rng.uniform(0.2, 1.0)
        surv.append((case, round(float(t), 3), event))
    return (
        arrays,
        pd.DataFrame(surv, columns=["case_id", "time", "event"]),
        pd.DataFrame(slides, columns=["slide_id", "case_id"]),
        np.array(burdens),
    )


def write_features(directory: Path, arrays: dict[str, np.ndarray], fmt: str = "zarr") -> Path:
    """Write one store per slide in ``fmt`` (zarr = ours, h5 = CLAM/TRIDENT, pt = tensor)."""
    from pipeline.store import write_store

    directory.mkdir(parents=True, exist_ok=True)
    for slide, x in arrays.items():
        n = x.shape[0]
        coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1).astype(np.int32)
        if fmt == "zarr":
            write_store(
                directory / f"{slide}.zarr",
                {"features": x.astype(np.float16), "coords": coords},
                {"encoder": "synthetic", "dim": x.shape[1]},
            )
        elif fmt == "h5":
            import h5py

            with h5py.File(directory / f"{slide}.h5", "w") as f:
                f["features"] = x
                f["coords"] = coords
        elif fmt == "pt":
            torch.save(torch.from_numpy(x), directory / f"{slide}.pt")
        else:
            raise ValueError(fmt)
    return directory


@pytest.fixture(scope="session")
def planted():
    return planted_bags()


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """A small classification cohort on disk: zarr features, labels.csv (with an unknown slide)."""
    root = tmp_path_factory.mktemp("cohort")
    arrays, labels = planted_bags(n_bags=32, dim=16, n_min=8, n_max=20, seed=1)
    write_features(root / "features", arrays)
    labels.to_csv(root / "labels.csv", index=False)
    return root, arrays, labels


def write_cohort_with_external(work: Path) -> tuple[Path, Path]:
    """24 planted bags (labels.csv) and a 20-bag external cohort of their own (ids ``ext_*``,
    ext_labels.csv) under ``work``; returns the two feature folders."""
    arrays, labels = planted_bags(n_bags=24, dim=16, n_min=8, n_max=16, seed=1)
    features = write_features(work / "features", arrays)
    labels.to_csv(work / "labels.csv", index=False)
    ext_arrays, ext_labels = planted_bags(n_bags=20, dim=16, n_min=8, n_max=16, seed=2)
    ext_arrays = {f"ext_{k}": v for k, v in ext_arrays.items()}
    ext_labels = ext_labels.assign(slide_id="ext_" + ext_labels.slide_id)
    ext_features = write_features(work / "ext_features", ext_arrays)
    ext_labels.to_csv(work / "ext_labels.csv", index=False)
    return features, ext_features
