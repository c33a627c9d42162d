"""Benchmark heatmap rendering of a 100 000-patch slide: seconds and peak memory, against a baseline.

The slide is the stub of ``tests/heatmaps/test_render_memory.py`` (81 152 px square at 0.5 um/px,
pyramid 1, 4, 16, 64x; flat pixels, so the figures measure our code, not a codec), with a score store of
the first ``--patches`` patches of its 256-px grid. Each measurement runs in a fresh process, so peak
resident memory (``ru_maxrss``) is the render's own: it is reported above the process's peak after
imports and after loading the store.

* ``render``: :func:`pipeline.heatmaps.render.render_heatmap`, 2048 px long side (read in strips,
  paint, blend, contours, caption and colour bar);
* ``paint``: painting alone, ours (2-D difference array: four corner updates per patch, two cumulative
  sums) against the baseline of a per-patch loop adding each patch's rectangle of output pixels to a
  sum and a count image (the straightforward way to paint at output resolution).

    .venv/bin/python bench/heatmap.py --patches 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _naive_paint(coords, values, size0, view):
    import numpy as np

    total = np.zeros((view.out_h, view.out_w))
    count = np.zeros((view.out_h, view.out_w), np.int32)
    for (x, y), v in zip(coords.tolist(), values.tolist(), strict=True):
        j0 = min(max(int(np.ceil((x - view.x0) * view.kx - 0.5)), 0), view.out_w)
        j1 = min(max(int(np.ceil((x + size0 - view.x0) * view.kx - 0.5)), 0), view.out_w)
        i0 = min(max(int(np.ceil((y - view.y0) * view.ky - 0.5)), 0), view.out_h)
        i1 = min(max(int(np.ceil((y + size0 - view.y0) * view.ky - 0.5)), 0), view.out_h)
        total[i0:i1, j0:j1] += v
        count[i0:i1, j0:j1] += 1
    np.divide(total, count, out=total, where=count > 0)
    return total, count


def child(kind: str, store_path: str) -> dict:
    """One measurement in this (fresh) process."""
    sys.path.insert(0, str(ROOT / "tests" / "heatmaps"))
    import numpy as np
    from test_render_memory import big_slide

    from pipeline.heatmaps.render import RenderOptions, choose_view, paint, render_heatmap
    from pipeline.heatmaps.store import read_score_store

    store = read_score_store(store_path)
    slide = big_slide()
    import matplotlib  # noqa: F401  (import cost is not the renderer's)

    view, _ = choose_view(slide, 0.5, RenderOptions())
    base = _rss_mb()
    t0 = time.perf_counter()
    if kind == "render":
        out = render_heatmap(slide, store, RenderOptions()).rgb.shape
    elif kind == "paint":
        out = paint(store.coords, store.scores["attention"], 256, view)[0].shape
    elif kind == "paint_naive":
        out = _naive_paint(store.coords, store.scores["attention"], 256, view)[0].shape
    seconds = time.perf_counter() - t0
    peak_above = _rss_mb() - base
    if kind == "paint_naive":  # the two painters agree (checked once per run)
        ours = paint(store.coords, store.scores["attention"], 256, view)
        naive = _naive_paint(store.coords, store.scores["attention"], 256, view)
        assert np.array_equal(ours[1], naive[1]) and np.allclose(ours[0], naive[0])
    return {
        "kind": kind,
        "seconds": seconds,
        "peak_rss_above_mb": peak_above,
        "base_rss_mb": base,
        "shape": list(out),
        "largest_read_px": slide.handle.largest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    sys.path.insert(0, str(ROOT / "tests" / "heatmaps"))
    from test_render_memory import grid_store

    with tempfile.TemporaryDirectory() as tmp:
        store = grid_store(Path(tmp) / "big.zarr", args.patches)
        results: dict[str, list[dict]] = {}
        for _ in range(args.repeat):  # interleaved: a shared machine's load drifts
            for kind in ("render", "paint", "paint_naive"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", kind, str(store)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                )
                results.setdefault(kind, []).append(
                    json.loads(proc.stdout.strip().splitlines()[-1])
                )
    summary = {
        kind: {
            "seconds_min": min(r["seconds"] for r in runs),
            "seconds_median": sorted(r["seconds"] for r in runs)[len(runs) // 2],
            "peak_rss_above_mb_max": max(r["peak_rss_above_mb"] for r in runs),
            "shape": runs[0]["shape"],
            "largest_read_px": runs[0]["largest_read_px"],
        }
        for kind, runs in results.items()
    }
    summary["paint_speedup_vs_naive"] = (
        summary["paint_naive"]["seconds_min"] / summary["paint"]["seconds_min"]
    )
    summary["machine"] = (
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    summary["patches"] = args.patches
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
