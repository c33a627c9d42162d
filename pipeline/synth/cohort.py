"""A cohort of synthetic slides: plan (cases, labels, sizes), slides, masks, labels and survival tables.

Everything about a slide is decided in the plan, before any pixel, from one seed; each slide then draws
from its own seed, so slides can be written in parallel and the cohort is the same whatever the worker
count. ``cohort.json`` is written last: its presence means the folder holds a complete cohort.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.store import atomic_path
from pipeline.synth.writer import MAGNIFICATION_MPP, write_synthetic_slide

MASK_CONVENTION = (
    "mask pixel (i, j) covers level-0 pixels x in [j*d, (j+1)*d), y in [i*d, (i+1)*d), "
    "d = mask_downsample = mask_mpp / mpp; 255 = inside"
)
SURVIVAL_MODEL = (
    "burden = mean tumour fraction of the case's slides (0 for normal cases); event time (months) = "
    "60 * exp(-2 * burden / max_burden + 0.35 * N(0, 1)); a random round(censored_fraction * n) "
    "cases are censored at U(0.3, 0.95) * event time"
)
MASK_KINDS = ("tissue", "tumor", "decoy", "ink")  # decoy and ink only when the cohort has them


@dataclass(frozen=True)
class CohortSlide:
    """One slide of a cohort plan (everything needed to write it, decided before any pixel)."""

    slide_id: str
    case_id: str
    label: str
    appmag: int
    mpp: float
    width: int
    height: int
    tumor_fraction: float
    seed: int


@dataclass(frozen=True)
class Extras:
    """Optional content of every slide of a cohort (see ``write_synthetic_slide``); off by default."""

    decoy_fraction: float = 0.0
    ink: tuple[str, ...] = ()
    border: bool = False

    def __post_init__(self):
        from pipeline.synth.fields import INK_RGB

        if not 0.0 <= self.decoy_fraction < 0.5:
            raise ValueError(f"decoy_fraction must be in [0, 0.5), got {self.decoy_fraction}")
        unknown = sorted(set(self.ink) - set(INK_RGB))
        if unknown:
            raise ValueError(f"unknown ink colour(s) {unknown}; choose from {sorted(INK_RGB)}")

    def as_params(self) -> dict[str, Any]:
        return {"decoy_fraction": self.decoy_fraction, "ink": list(self.ink), "border": self.border}

    def kinds(self) -> list[str]:
        """The masks each slide gets."""
        return (
            ["tissue", "tumor"]
            + ["decoy"] * (self.decoy_fraction > 0)
            + ["ink"] * bool(self.ink or self.border)
        )


def _slide_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _check_plan(n_slides: int, tumor_fraction_range: tuple[float, float], prefix: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", prefix):
        raise ValueError(f"prefix {prefix!r} may hold only letters, digits, '_' and '-'")
    if n_slides < 2:
        raise ValueError(f"a cohort needs at least 2 slides (one per class), got {n_slides}")
    lo, hi = tumor_fraction_range
    if not 0 < lo <= hi < 1:
        raise ValueError(
            f"tumor_fraction_range must satisfy 0 < low <= high < 1, got {tumor_fraction_range}"
        )


def plan_cohort(
    n_slides: int,
    seed: int,
    *,
    size_scale: float = 1.0,
    tumor_fraction_range: tuple[float, float] = (0.02, 0.10),
    two_slide_fraction: float = 0.25,
    prefix: str = "",
) -> list[CohortSlide]:
    """Cases, labels, magnifications and sizes of a balanced cohort; ~``two_slide_fraction`` of the
    cases get two slides (same label). Default sizes (~2.3×1.65 mm) give ~50-300 patches of 256 px at
    0.5 µm/px per slide; ``size_scale`` scales both sides. ``prefix`` starts every slide and case id
    (``ext_case000_a``), so a second cohort can be used beside the first without clashing ids; it
    changes nothing else (seeds come from the slide's index, not its name)."""
    _check_plan(n_slides, tumor_fraction_range, prefix)
    lo, hi = tumor_fraction_range
    rng = np.random.default_rng(seed)
    n_cases = max(2, round(n_slides / (1 + two_slide_fraction)))
    n_double = min(n_slides - n_cases, n_cases)
    n_cases = n_slides - n_double
    positive = np.zeros(n_cases, bool)
    positive[rng.permutation(n_cases)[: n_cases // 2]] = True
    double = np.zeros(n_cases, bool)
    double[rng.permutation(n_cases)[:n_double]] = True
    mags = np.array([40, 20] * (n_slides // 2 + 1))[:n_slides][rng.permutation(n_slides)]
    plan = []
    for case in range(n_cases):
        for k in range(2 if double[case] else 1):
            i = len(plan)
            mag = int(mags[i])
            mpp = MAGNIFICATION_MPP[mag]
            w_um = rng.uniform(1800.0, 2800.0) * size_scale
            h_um = rng.uniform(1300.0, 2000.0) * size_scale
            frac = float(rng.uniform(lo, hi)) if positive[case] else 0.0
            plan.append(
                CohortSlide(
                    slide_id=f"{prefix}case{case:03d}_{'ab'[k]}",
                    case_id=f"{prefix}case{case:03d}",
                    label="tumor" if positive[case] else "normal",
                    appmag=mag,
                    mpp=mpp,
                    width=max(64, round(w_um / mpp)),
                    height=max(64, round(h_um / mpp)),
                    tumor_fraction=round(frac, 4),
                    seed=_slide_seed(seed, i),
                )
            )
    return plan


def survival_table(
    burden: dict[str, float], seed: int, *, censored_fraction: float = 0.3, max_burden: float = 0.10
):
    """``case_id,time,event``: higher tumour burden → shorter time; exactly ``round(censored_fraction
    * n)`` cases censored at random (independent of risk), observed before their event."""
    import pandas as pd

    rng = np.random.default_rng(np.random.SeedSequence([seed, 10**6]))
    cases = sorted(burden)
    risk = np.array([burden[c] / max_burden for c in cases])
    event_time = 60.0 * np.exp(-2.0 * risk + 0.35 * rng.standard_normal(len(cases)))
    n_censored = round(censored_fraction * len(cases))
    censored = np.zeros(len(cases), bool)
    censored[rng.permutation(len(cases))[:n_censored]] = True
    observed = np.where(censored, event_time * rng.uniform(0.3, 0.95, len(cases)), event_time)
    return pd.DataFrame(
        {
            "case_id": cases,
            "time": np.maximum(observed, 0.1).round(2),
            "event": (~censored).astype(int),
        }
    )


def _png_bytes(mask: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _write_cohort_slide(
    outdir: Path, item: CohortSlide, mask_mpp: float, extras: Extras
) -> dict[str, Any]:
    truth = write_synthetic_slide(
        outdir / "slides" / f"{item.slide_id}.svs",
        width=item.width,
        height=item.height,
        mpp=item.mpp,
        appmag=item.appmag,
        seed=item.seed,
        tumor_fraction=item.tumor_fraction,
        mask_mpp=mask_mpp,
        decoy_fraction=extras.decoy_fraction,
        ink=extras.ink,
        border=extras.border,
    )
    info = truth.summary()
    info.update(
        path=f"slides/{item.slide_id}.svs",
        case_id=item.case_id,
        label=item.label,
        target_tumor_fraction=item.tumor_fraction,
    )
    if extras.decoy_fraction > 0:
        info["decoy_fraction"] = round(truth.decoy_fraction, 6)
    for kind in extras.kinds():
        info[f"{kind}_mask"] = name = f"masks/{item.slide_id}_{kind}.png"
        with atomic_path(outdir / name) as tmp:
            tmp.write_bytes(_png_bytes(getattr(truth, kind)))
    return info


def generator_digest() -> str:
    """SHA-256 of the generator's source: a cohort made by other code is not reused."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _read_cohort(outdir: Path) -> dict[str, Any] | None:
    """The cohort description if it exists and every file it names is there, else None."""
    import json

    try:
        cohort = json.loads((outdir / "cohort.json").read_text())
        files = [s[k] for s in cohort["slides"] for k in _file_keys(s)]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    names = ["labels.csv", "survival.csv", "masks/masks.json", *files]
    return cohort if all((outdir / f).is_file() for f in names) else None


def _file_keys(slide: dict[str, Any]) -> list[str]:
    return ["path", "tissue_mask", "tumor_mask"] + [
        f"{k}_mask" for k in MASK_KINDS[2:] if f"{k}_mask" in slide
    ]


def _remove_stale(outdir: Path, existing: dict[str, Any] | None, plan: list[CohortSlide]) -> None:
    """Delete the files of an earlier cohort's slides that the new plan does not have."""
    keep = {item.slide_id for item in plan}
    for old in (existing or {}).get("slides", []):
        if old.get("slide_id") not in keep:
            for key in ("path", *(f"{k}_mask" for k in MASK_KINDS)):
                if old.get(key):
                    (outdir / old[key]).unlink(missing_ok=True)


def _write_slides(
    outdir: Path, plan: list[CohortSlide], mask_mpp: float, extras: Extras, workers: int, log
) -> list[dict[str, Any]]:
    """Write every slide of the plan (in ``workers`` processes); their descriptions in plan order."""
    infos: list[dict[str, Any]] = []
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            futures = [
                pool.submit(_write_cohort_slide, outdir, item, mask_mpp, extras) for item in plan
            ]
            for i, fut in enumerate(futures):
                infos.append(fut.result())
                log.info("slide %d/%d written: %s", i + 1, len(plan), plan[i].slide_id)
        return infos
    for i, item in enumerate(plan):
        infos.append(_write_cohort_slide(outdir, item, mask_mpp, extras))
        log.info(
            "slide %d/%d written: %s (%s, %dx, %dx%d px)",
            i + 1, len(plan), item.slide_id, item.label, item.appmag, item.width, item.height,
        )  # fmt: skip
    return infos


def _write_tables(
    outdir: Path,
    infos: list[dict[str, Any]],
    seed: int,
    censored_fraction: float,
    max_burden: float,
) -> int:
    """``labels.csv``, ``survival.csv`` and ``masks/masks.json``; returns the number of cases."""
    import pandas as pd

    from pipeline.store import write_json, write_text

    labels = pd.DataFrame([{k: s[k] for k in ("slide_id", "case_id", "label")} for s in infos])
    write_text(outdir / "labels.csv", labels.to_csv(index=False))
    burden: dict[str, list[float]] = {}
    for s in infos:
        burden.setdefault(s["case_id"], []).append(s["tumor_fraction"])
    survival = survival_table(
        {c: float(np.mean(v)) for c, v in burden.items()},
        seed,
        censored_fraction=censored_fraction,
        max_burden=max_burden,
    )
    write_text(outdir / "survival.csv", survival.to_csv(index=False))
    mask_keys = ("mask_mpp", "mask_downsample", "mask_shape")
    masks = {s["slide_id"]: {k: s[k] for k in (*mask_keys, *_file_keys(s)[1:])} for s in infos}
    write_json(outdir / "masks" / "masks.json", {"convention": MASK_CONVENTION, "slides": masks})
    return len(burden)


def _write_cohort(
    outdir: Path,
    existing: dict[str, Any] | None,
    plan: list[CohortSlide],
    params: dict[str, Any],
    extras: Extras,
    workers: int,
) -> dict[str, Any]:
    """Slides, masks, tables, then ``cohort.json`` (last) of a planned cohort."""
    from pipeline import __version__
    from pipeline.log import get_logger
    from pipeline.store import write_json

    log = get_logger("synth")
    _remove_stale(outdir, existing, plan)
    (outdir / "slides").mkdir(parents=True, exist_ok=True)
    (outdir / "masks").mkdir(parents=True, exist_ok=True)
    infos = _write_slides(outdir, plan, params["mask_mpp"], extras, workers, log)
    max_burden = params["tumor_fraction_range"][1]
    n_cases = _write_tables(outdir, infos, params["seed"], params["censored_fraction"], max_burden)
    cohort = {
        "generator": f"wsi-mil {__version__} synth",
        "params": params,
        "n_cases": n_cases,
        "mask_convention": MASK_CONVENTION,
        "survival_model": SURVIVAL_MODEL,
        "slides": infos,
    }
    write_json(outdir / "cohort.json", cohort)
    log.info("cohort of %d slides / %d cases written to %s", len(infos), n_cases, outdir)
    return cohort


def make_cohort(
    outdir: str | os.PathLike,
    n_slides: int = 24,
    seed: int = 0,
    *,
    size_scale: float = 1.0,
    tumor_fraction_range: tuple[float, float] = (0.02, 0.10),
    two_slide_fraction: float = 0.25,
    censored_fraction: float = 0.3,
    mask_mpp: float = 8.0,
    workers: int = 1,
    overwrite: bool = False,
    decoy_fraction: float = 0.0,
    ink: tuple[str, ...] = (),
    border: bool = False,
    prefix: str = "",
) -> dict[str, Any]:
    """Write a cohort: ``slides/*.svs``, ``labels.csv``, ``survival.csv``, ``masks/*.png``,
    ``masks/masks.json`` and ``cohort.json`` (written last: its presence means the cohort is complete).

    ``decoy_fraction``, ``ink`` and ``border`` add distractors and artefacts to every slide (see
    ``write_synthetic_slide``) and their masks ``masks/{slide}_decoy.png`` / ``_ink.png``; off, the
    files are those of a cohort without them. ``prefix`` starts every slide and case id (see
    ``plan_cohort``): the same pixels, masks and tables as without it, under other names. A complete cohort made by the same generator code with
    the same parameters is reused as it is (``overwrite=True`` rewrites it), so the demo can call this
    on every run. Returns ``cohort.json``.
    """
    from pipeline.log import get_logger

    log = get_logger("synth")
    outdir = Path(outdir)
    extras = Extras(float(decoy_fraction), tuple(ink), bool(border))
    params = {
        "n_slides": n_slides,
        "seed": seed,
        "size_scale": size_scale,
        "tumor_fraction_range": list(tumor_fraction_range),
        "two_slide_fraction": two_slide_fraction,
        "censored_fraction": censored_fraction,
        "mask_mpp": mask_mpp,
        "prefix": prefix,
        **extras.as_params(),
        "generator_sha256": generator_digest(),
    }
    existing = _read_cohort(outdir)
    if existing is not None and not overwrite and existing.get("params") == params:
        log.info("cohort in %s is complete and up to date; reusing it", outdir)
        return existing
    # from here on the folder is not a complete cohort: cohort.json goes first, comes back last
    (outdir / "cohort.json").unlink(missing_ok=True)
    plan = plan_cohort(
        n_slides,
        seed,
        size_scale=size_scale,
        tumor_fraction_range=tumor_fraction_range,
        two_slide_fraction=two_slide_fraction,
        prefix=prefix,
    )
    return _write_cohort(outdir, existing, plan, params, extras, workers)
