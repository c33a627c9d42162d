"""Benchmark the viewer's tile pyramid: MB and seconds per slide, bounded vs unbounded, and the demo.

1. A ~1 gigapixel synthetic 40x slide (40960 x 30720 at 0.25 µm/px, made and cached as
   ``bench/tiling.py`` makes it): the pyramid at the default ``viewer.max_um_per_px`` = 1.0 against
   the baseline of every Deep Zoom level down to level 0 (``max_um_per_px: 0``), same process, same
   thread count; MB on disk, tiles, seconds, and the ratios.
2. The demo cohort (``wsi-mil synth --slides 24 --seed 0``, as ``make demo`` makes it): what the
   viewer adds to the demo, as its jobs run them (one process per job, via the CLI): the pyramid of
   each slide at the defaults with one thread (the demo runs two such jobs side by side on 2 cores),
   then per task (the demo has two) the GeoJSON and the pages of all 24 slides for its three methods
   (random score stores written here: the pages' cost does not depend on the model).

    .venv/bin/python bench/viewer.py                     # both parts
    .venv/bin/python bench/viewer.py --skip-full         # without the unbounded baseline
    .venv/bin/python bench/viewer.py --skip-gigapixel    # the demo part only

Rows go to bench/results/viewer.jsonl (one JSON object per measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiling import ensure_slide  # noqa: E402  (the same cached 1-gigapixel slide)

RESULTS = Path(__file__).resolve().parent / "results" / "viewer.jsonl"


def pyramid(slide: Path, out: Path, mpp: float, bound: float, threads: int) -> dict:
    from pipeline.viewer.pyramid import PyramidOptions, write_pyramid

    t0 = time.perf_counter()
    record = write_pyramid(
        slide,
        out,
        slide_mpp=mpp,
        slide_id=slide.stem,
        options=PyramidOptions(max_um_per_px=bound),
        threads=threads,
    )
    seconds = time.perf_counter() - t0
    shutil.rmtree(out)
    return {
        "slide": slide.name,
        "max_um_per_px": bound,
        "threads": threads,
        "finest_mpp": record["mpp"],
        "levels": record["top_level"] + 1,
        "tiles": record["n_tiles"],
        "mb": round(record["bytes"] / 1e6, 2),
        "seconds": round(seconds, 2),
    }


def emit(row: dict, rows: list[dict]) -> None:
    row = {**row, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    rows.append(row)
    print(json.dumps(row), flush=True)


def gigapixel(args, work: Path, rows: list[dict]) -> None:
    big = ensure_slide(args.cache, 40960, 30720, 0)
    bounded = pyramid(big, work / "p", 0.25, 1.0, args.threads)
    emit({"part": "gigapixel", **bounded}, rows)
    if not args.skip_full:
        full = pyramid(big, work / "p", 0.25, 0.0, args.threads)
        emit({"part": "gigapixel", **full}, rows)
        print(
            f"bounded / every level: {bounded['mb'] / full['mb']:.3f}x the MB, "
            f"{bounded['seconds'] / full['seconds']:.3f}x the seconds"
        )


CPU: list[float] = []  # CPU seconds (user + system) of every job, whatever the machine's load


def _cli(*args: str) -> float:
    """Wall seconds of one `wsi-mil` job, as the workflow starts it (a fresh process); its CPU
    seconds go to ``CPU`` (on a shared machine the wall time grows with the load, CPU time less)."""
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", *args], check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return seconds


def demo(cohort: Path, work: Path, rows: list[dict]) -> None:
    import numpy as np

    from pipeline.config import section
    from pipeline.heatmaps.store import write_score_store
    from pipeline.slides import open_slide, resolve_mpp
    from pipeline.store import read_array, read_attrs, write_json
    from pipeline.synth import make_cohort
    from pipeline.tiling import run_tiling

    make_cohort(cohort, 24, seed=0)
    slides = sorted((cohort / "slides").glob("*.svs"))
    tiles_dir, heatmaps = work / "tiles", work / "heatmaps"
    methods = {"abmil": ["attention"], "mhim_abmil": ["attention", "instance_prob", "teacher_attention"],
               "meanpool": ["instance_logit"]}  # fmt: skip
    for slide in slides:
        with open_slide(slide) as handle:
            mpp, source = resolve_mpp(handle, override=None, default=None)
            run_tiling(
                handle, mpp, source, section(None, "tiling"), 0.1, tiles_dir / f"{slide.stem}.zarr"
            )
        coords = read_array(tiles_dir / f"{slide.stem}.zarr", "coords")
        attrs = read_attrs(tiles_dir / f"{slide.stem}.zarr")
        rng = np.random.default_rng(0)
        for method, names in methods.items():
            scores = {n: rng.uniform(0, 1, len(coords)).astype(np.float32) for n in names}
            write_score_store(heatmaps / "enc" / method / f"{slide.stem}.zarr", coords, scores,
                              slide_id=slide.stem, method=method, tile_attrs=attrs, label="tumor",
                              prediction=0.5, provenance={"fold": 0, "role": "test"})  # fmt: skip
    folders = [heatmaps / "enc" / m for m in methods]
    for folder in folders:
        write_json(folder / "index.json", {"slides": {s.stem: {} for s in slides}})
    total = {"pyramid_s": 0.0, "pyramid_mb": 0.0}
    for slide in slides:
        out = work / "report" / "slides" / slide.stem
        seconds = _cli(
            "viewer-tiles", str(tiles_dir / f"{slide.stem}.zarr"), "-o", str(out), "--threads", "1"
        )
        record = json.loads((out / "pyramid.json").read_text())
        total["pyramid_s"] += seconds
        total["pyramid_mb"] += record["bytes"] / 1e6
        emit({"part": "demo_pyramid", "slide": slide.stem, "seconds": round(seconds, 2),
              "mb": round(record["bytes"] / 1e6, 3), "tiles": record["n_tiles"],
              "finest_mpp": record["mpp"]}, rows)  # fmt: skip
    for task in ("tumour", "survival"):
        geo = work / "geojson" / task
        heat = [str(f) for f in folders]
        geo_s = _cli("export-geojson", *[str(p) for p in sorted(tiles_dir.glob("*.zarr"))],
                     "--heatmaps", *heat, "-o", str(geo))  # fmt: skip
        pages_s = _cli("viewer", "--task", task, "--heatmaps", *heat, "--tiles-dir", str(tiles_dir),
                       "--geojson", str(geo), "--pyramids", str(work / "report" / "slides"),
                       "-o", str(work / "report" / "viewer" / task))  # fmt: skip
        total[f"geojson_{task}_s"] = round(geo_s, 2)
        total[f"pages_{task}_s"] = round(pages_s, 2)
    pages_mb = sum(p.stat().st_size for p in (work / "report" / "viewer").rglob("*") if p.is_file())
    geo_mb = sum(p.stat().st_size for p in (work / "geojson").rglob("*") if p.is_file())
    total["pages_mb"] = round(pages_mb / 1e6, 2)
    total["geojson_mb"] = round(geo_mb / 1e6, 2)
    total["pyramid_s"] = round(total["pyramid_s"], 2)
    total["pyramid_mb"] = round(total["pyramid_mb"], 2)
    wall_s = sum(v for k, v in total.items() if k.endswith("_s"))
    emit({"part": "demo_total", "slides": len(slides), **total, "job_seconds": round(wall_s, 1),
          "cpu_seconds": round(sum(CPU), 1), "pyramid_cpu_seconds": round(sum(CPU[:len(slides)]), 1),
          "idle_2_core_estimate_s": round(sum(CPU) / 2, 1)}, rows)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wsi-mil" / "bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-full", action="store_true", help="no unbounded baseline")
    parser.add_argument("--skip-demo", action="store_true", help="no demo cohort")
    parser.add_argument("--skip-gigapixel", action="store_true", help="no 1-gigapixel slide")
    args = parser.parse_args()
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="wsi-mil-viewer-bench-"))
    try:
        if not args.skip_gigapixel:
            gigapixel(args, work, rows)
        if not args.skip_demo:
            demo(args.cache / "demo_cohort", work, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as handle:
        for row in rows:
            handle.write(json.dumps({**row, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    print(f"rows appended to {RESULTS}")


if __name__ == "__main__":
    main()
