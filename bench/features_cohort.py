"""Cohort mode of bench/features.py: does extracting a whole cohort cost what the model costs?

N small synthetic slides (pipeline.synth, cached) are tiled by the workflow (not timed), then their
feature stores are made by the workflow end to end — ``snakemake --cores C`` with the default
settings and ``efficientnet_lite0`` on CPU: Snakemake start-up, group jobs (process start, imports,
model build), decoding, model, writing, per-slide publishing — and timed by wall clock. In the same
run, the model alone embeds the very same patches, pre-loaded in memory, with every core
(``encode_batches``, batch 64). The ratio model-only / end-to-end is the figure of merit (goal
≥ 0.85): what everything around the model costs a cohort.

    .venv/bin/python bench/features.py --cohort 12
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENCODER = "efficientnet_lite0"


def make_slides(cache: Path, n: int, size: int) -> Path:
    from pipeline.synth import write_synthetic_slide

    folder = cache / f"cohort_{size}px"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"slide{i:03d}.svs"
        if not path.exists():
            print(f"generating {path.name} (cached in {folder}) ...", flush=True)
            write_synthetic_slide(
                path, width=size, height=size, mpp=0.5, seed=i, tumor_fraction=0.2
            )
    return folder


def write_workdir(work: Path, slides: Path, n: int, cores: int) -> list[str]:
    import yaml

    ids = [f"slide{i:03d}" for i in range(n)]
    (work / "slides").mkdir(parents=True, exist_ok=True)
    for sid in ids:
        link = work / "slides" / f"{sid}.svs"
        if not link.exists():
            link.symlink_to(slides / f"{sid}.svs")
    rows = "".join(f"{sid},{sid},{'ab'[i % 2]}\n" for i, sid in enumerate(ids))
    (work / "labels.csv").write_text("slide_id,case_id,label\n" + rows)
    config = {
        "slides_dir": str(work / "slides"),
        "results_dir": "results",
        "tasks": [{"name": "t", "type": "classification", "table": str(work / "labels.csv")}],
        "features": {"encoders": [ENCODER], "device": "cpu"},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return ids


def snakemake(work: Path, cores: int, targets: list[str]) -> float:
    env = dict(os.environ, SLURM_CONF=os.devnull)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    cmd += ["-d", str(work), "--cores", str(cores), *targets, "--quiet", "all"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def model_only(stores: list[Path], slides: list[Path], batch_size: int) -> tuple[float, int]:
    """Seconds for the model alone on every patch of ``stores`` (pre-loaded uint8, all cores)."""
    import torch

    from pipeline.encoders import create_encoder
    from pipeline.features import encode_batches
    from pipeline.patches import PatchChunks, configure_threads
    from pipeline.tilestore import read_tiles

    configure_threads(0)
    batches = []
    for store, slide in zip(stores, slides, strict=True):
        tiles = read_tiles(store)
        data = PatchChunks(slide, tiles.coords, tiles.geometry(), batch_size, tiles.reader)
        batches += [data[i] for i in range(len(data))]
        data.close()
    encoder = create_encoder(ENCODER, "pretrained")
    device = torch.device("cpu")
    for _ in encode_batches(encoder, batches[:1], device, "fp32"):  # warm-up
        pass
    t0 = time.perf_counter()
    for _ in encode_batches(encoder, batches, device, "fp32"):
        pass
    return time.perf_counter() - t0, sum(len(b) for b in batches)


def run_cohort(args) -> int:
    import platform

    cores = len(os.sched_getaffinity(0))
    slides = make_slides(args.cache, args.cohort, args.cohort_slide_size)
    work = args.cache / f"cohort_run_{args.cohort}x{args.cohort_slide_size}"
    ids = write_workdir(work, slides, args.cohort, cores)
    tiles = [f"results/tiles/{sid}.zarr" for sid in ids]
    feats = [f"results/features/{ENCODER}/{sid}.zarr" for sid in ids]
    snakemake(work, cores, tiles)  # tiling is not what is measured
    for folder in (
        "features",
        "staging",
        "logs/extract",
        "benchmarks/extract",
        "logs/extract_batch",
        "benchmarks/extract_batch",
    ):
        shutil.rmtree(work / "results" / folder, ignore_errors=True)
    e2e = snakemake(work, cores, feats)
    model, patches = model_only(
        [work / t for t in tiles], [work / "slides" / f"{s}.svs" for s in ids], 64
    )
    print(
        f"machine: {platform.node()}, {cores} usable cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"cohort: {args.cohort} synthetic slides of {args.cohort_slide_size} px at 0.5 µm/px, "
        f"{patches} patches, {ENCODER} on CPU, workflow defaults (batch 64, 4 workers, "
        f"{args.cohort} slides per group job up to features.slides_per_job)"
    )
    print(
        f"{'end-to-end (snakemake) s':<28}{'model-only s':>14}{'e2e p/s':>10}{'model p/s':>11}{'ratio':>8}"
    )
    print(
        f"{e2e:<28.1f}{model:>14.1f}{patches / e2e:>10.1f}{patches / model:>11.1f}"
        f"{model / e2e:>8.2f}"
    )
    return 0
