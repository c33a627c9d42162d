"""Benchmark the tiling stage on a large synthetic 40× slide: seconds per stage and peak memory.

Compares ``pipeline.tiling`` (segmentation read at ~8 µm/px in strips, vectorised tissue fraction over
the whole grid, atomic zarr write) with a reference that follows CLAM's create_patches_fp procedure,
re-written here: read the pyramid level nearest to a 64× downsample whole, the same saturation
segmentation, then one grid per tissue contour with a point-in-polygon test per patch (CLAM's default
``four_pt`` check: any of four points around the centre inside the contour, centre not in a hole),
single process. The issue's own figure for CLAM on such a slide on this machine is 1.5–3 s; both
ratios are printed.

Each measurement runs in a fresh subprocess so that peak resident memory (``ru_maxrss``, which counts
C allocations that tracemalloc misses) belongs to that run alone; the memory of the imports is
reported separately.

    .venv/bin/python bench/tiling.py                 # 40960×30720 slide, 3 repeats
    .venv/bin/python bench/tiling.py --repeat 5 --cache /tmp/bench

The slide is generated once with ``pipeline.synth`` (minutes) and cached.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLAM_ISSUE_SECONDS = (1.5, 3.0)  # issue 3: CLAM's create_patches_fp on such a slide on this machine


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _import_all() -> float:
    """Import what both methods use before the clock starts (a cohort run pays this once per process)."""
    t0 = time.perf_counter()
    import cv2  # noqa: F401
    import numpy  # noqa: F401
    import openslide  # noqa: F401
    import zarr  # noqa: F401

    import pipeline.tiling  # noqa: F401

    return time.perf_counter() - t0


def clam_style_grid(tissue, width: int, height: int, size: int) -> list[tuple[int, int]]:
    """CLAM's patch selection: a grid per contour's bounding box, point-in-polygon tests per patch."""
    import cv2
    import numpy as np

    factor = np.array(tissue.scale)
    coords = []
    shift = size // 4
    for piece, holes in zip(tissue.pieces, tissue.holes, strict=True):
        contour = (piece * factor).astype(np.int32)
        hole_contours = [(h * factor).astype(np.int32) for h in holes]
        x0, y0, w, h = cv2.boundingRect(contour)
        for y in range(y0, min(y0 + h, height - size + 1), size):
            for x in range(x0, min(x0 + w, width - size + 1), size):
                cx, cy = x + size // 2, y + size // 2
                corners = ((cx - shift, cy - shift), (cx + shift, cy - shift),
                           (cx - shift, cy + shift), (cx + shift, cy + shift))  # fmt: skip
                inside = any(cv2.pointPolygonTest(contour, p, False) >= 0 for p in corners)
                if inside and not any(
                    cv2.pointPolygonTest(hc, (cx, cy), False) > 0 for hc in hole_contours
                ):
                    coords.append((x, y))
    return coords


def ensure_slide(cache: Path, width: int, height: int, seed: int) -> Path:
    from pipeline.synth import write_synthetic_slide

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"synth40x_{width}x{height}_seed{seed}.svs"
    if not path.exists():
        print(f"generating {path.name} (once; cached in {cache}) ...", flush=True)
        t0 = time.perf_counter()
        write_synthetic_slide(
            path, width=width, height=height, mpp=0.25, seed=seed, tumor_fraction=0.2
        )
        print(f"  generated in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


# ------------------------------------------------------------------------------------------ children


def run_ours(slide_path: str, out_dir: str, seg_mpp: float | None = None) -> dict:
    from pipeline.config import section
    from pipeline.slides import open_slide, resolve_mpp
    from pipeline.tiling import publish, qc_image, tile_attrs, tile_slide

    tiling, slides = section(None, "tiling"), section(None, "slides")
    if seg_mpp is not None:
        tiling["seg_mpp"] = seg_mpp
    import_s = _import_all()
    imports_mb = _rss_mb()
    t0 = time.perf_counter()
    slide = open_slide(slide_path)
    mpp, source = resolve_mpp(slide)
    opened = time.perf_counter() - t0
    result = tile_slide(slide, mpp, tiling, slides["mpp_tolerance"])
    t0 = time.perf_counter()
    publish(Path(out_dir) / "ours.zarr", result.coords, tile_attrs(slide, source, result, tiling))
    write = time.perf_counter() - t0
    core_mb = _rss_mb()
    t0 = time.perf_counter()
    qc_image(slide, result)
    qc = time.perf_counter() - t0
    seconds = {"open": opened, **result.seconds, "write": write}
    seconds["total"] = sum(seconds.values())
    seconds["qc (optional)"] = qc
    t0 = time.perf_counter()
    width, height = slide.dimensions
    clam_style_grid(result.tissue, width, height, result.geometry.level0_patch_size)
    seconds["clam-style grid on our mask"] = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "import_s": import_s,
        "patches": len(result.coords),
        "imports_mb": imports_mb,
        "peak_mb": core_mb,
        "peak_with_qc_mb": _rss_mb(),
        "seg_size": list(result.tissue.mask.shape[::-1]),
    }


def run_clam_reference(slide_path: str, out_dir: str) -> dict:
    import numpy as np
    import openslide

    from pipeline.config import section
    from pipeline.slides import open_slide, patch_geometry
    from pipeline.store import write_store
    from pipeline.tissue import TissueParams, segment_rgb

    tiling = section(None, "tiling")
    params = TissueParams.from_config(tiling)
    import_s = _import_all()
    imports_mb = _rss_mb()
    t0 = time.perf_counter()
    osr = openslide.OpenSlide(slide_path)
    mpp = float(osr.properties["openslide.mpp-x"])
    with open_slide(slide_path) as s:  # same patch size as ours (512 level-0 px at 40×)
        size = patch_geometry(s, mpp, tiling["target_mpp"], tiling["patch_size"], 0.1)
    size = size.level0_patch_size
    opened = time.perf_counter() - t0
    t0 = time.perf_counter()
    level = osr.get_best_level_for_downsample(64)
    dims = osr.level_dimensions[level]
    rgb = np.array(osr.read_region((0, 0), level, dims).convert("RGB"))  # whole level, as CLAM
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    width, height = osr.dimensions
    tissue = segment_rgb(rgb, (width / dims[0], height / dims[1]), mpp, params)
    mask = time.perf_counter() - t0
    t0 = time.perf_counter()
    coords = clam_style_grid(tissue, width, height, size)
    grid = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_store(
        Path(out_dir) / "clam.zarr",
        {"coords": np.array(coords, np.int32).reshape(-1, 2)},
        {"patch_size": size},
    )
    write = time.perf_counter() - t0
    seconds = {"open": opened, "read": read, "mask": mask, "grid": grid, "write": write}
    seconds["total"] = sum(seconds.values())
    return {
        "seconds": seconds,
        "import_s": import_s,
        "patches": len(coords),
        "imports_mb": imports_mb,
        "peak_mb": _rss_mb(),
        "seg_size": list(dims),
    }


CHILDREN = {
    "ours": run_ours,
    "ours_seg16": functools.partial(run_ours, seg_mpp=16.0),
    "clam_reference": run_clam_reference,
}


# ------------------------------------------------------------------------------------------- parent


def measure(method: str, slide: Path, repeat: int) -> list[dict]:
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", method, "--slide", str(slide), "--out", out],
                capture_output=True,
                text=True,
                check=False,
            )
        if proc.returncode != 0:
            sys.exit(f"{method} failed:\n{proc.stderr}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return runs


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r["seconds"][key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=40960)
    parser.add_argument("--height", type=int, default=30720)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wsi-mil" / "bench")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--slide", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.slide, args.out)))
        return

    slide = ensure_slide(args.cache, args.width, args.height, args.seed)
    ours = measure("ours", slide, args.repeat)
    ours16 = measure("ours_seg16", slide, args.repeat)
    ref = measure("clam_reference", slide, args.repeat)
    print(
        f"\nslide {slide.name}: {args.width}×{args.height} px at 0.25 µm/px "
        f"({slide.stat().st_size / 1e6:.0f} MB); median of {args.repeat} fresh processes"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    mask8, mask16, clam = ours[0]["seg_size"], ours16[0]["seg_size"], ref[0]["seg_size"]
    print(
        f"{'stage (s)':<12}{'ours, 8 µm/px':>16}{'ours, 16 µm/px':>16}{'CLAM procedure':>16}"
        f"{'CLAM / ours':>13}\n{'':<12}{f'mask {mask8[0]}×{mask8[1]}':>16}"
        f"{f'mask {mask16[0]}×{mask16[1]}':>16}"
        f"{f'mask {clam[0]}×{clam[1]}':>16}{'(16 µm/px)':>13}"
    )
    for key in ["open", "read", "mask", "grid", "write", "total"]:
        a, b, c = _median(ours, key), _median(ours16, key), _median(ref, key)
        print(f"{key:<12}{a:>16.3f}{b:>16.3f}{c:>16.3f}{c / b if b else float('nan'):>12.1f}×")
    print(f"{'qc (opt.)':<12}{_median(ours, 'qc (optional)'):>16.3f}")
    loop, grid = _median(ours, "clam-style grid on our mask"), _median(ours, "grid")
    print(
        f"\npatch selection on the same {mask8[0]}×{mask8[1]} mask: vectorised {grid:.3f} s, "
        f"CLAM-style per-patch point-in-polygon {loop:.3f} s ({loop / grid:.0f}× slower)"
    )
    total = _median(ours, "total")
    lo, hi = CLAM_ISSUE_SECONDS
    print(
        f"default (8 µm/px) vs the issue's figure for CLAM create_patches_fp ({lo}–{hi} s): "
        f"{lo / total:.1f}–{hi / total:.1f}× faster"
    )
    print(
        "imports before the clock (paid once per process): "
        f"{statistics.median(r['import_s'] for r in ours):.2f} s"
    )

    def peak(runs: list[dict], key: str = "peak_mb") -> str:
        mb = statistics.median(r[key] for r in runs)
        return f"{mb:.0f} MB ({mb - statistics.median(r['imports_mb'] for r in runs):.0f} above imports)"

    print(
        f"peak RSS: ours {peak(ours)}, with QC {peak(ours, 'peak_with_qc_mb')}; "
        f"ours at 16 µm/px {peak(ours16)}; CLAM procedure {peak(ref)}"
    )
    print(
        f"patches: ours {ours[0]['patches']}, ours at 16 µm/px {ours16[0]['patches']}, "
        f"CLAM procedure {ref[0]['patches']}"
    )


if __name__ == "__main__":
    main()
