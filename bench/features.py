"""Benchmark feature extraction: is the model the bottleneck, or is reading?

For each encoder, in one process and with the same batch size, it measures

* ``end-to-end``: :func:`pipeline.features.extract_features` from a synthetic 40× SVS (OpenSlide read
  of 512 level-0 px, area resize to 256, DataLoader workers, preprocessing, model, zarr write, atomic
  publish) — wall time of the whole call;
* ``model-only``: the very same inference loop (:func:`pipeline.features.encode_batches`: transfer,
  resize + normalise, autocast, copy back) on the same patches pre-loaded in memory as uint8 tensors,
  with the thread settings of the end-to-end run (so the ratio isolates reading stalls), and on CPU
  also with every core given to the model (what reading costs in total);
* ``read-only``: the DataLoader alone (decoding throughput of the workers).

The ratio end-to-end / model-only is the figure of merit (goal ≥ 0.9). Model-only and end-to-end runs
are interleaved ``--repeat`` times and the best of each is kept, because a shared machine's load drifts. On CUDA the defaults measure
``resnet50_trunc`` and the UNI architecture (random weights: speed does not depend on them) in bf16.

    .venv/bin/python bench/features.py                            # CPU: efficientnet_lite0, resnet50_trunc
    .venv/bin/python bench/features.py --device cuda              # GPU: resnet50_trunc, uni (bf16)
    .venv/bin/python bench/features.py --workers 0,1 --patches 256 --json out.json
    .venv/bin/python bench/features.py --cohort 12    # workflow end to end vs model-only

The slide is generated once with ``pipeline.synth`` and cached in ``--cache``; its tissue patches are
found with the real tiling stage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def ensure_slide(cache: Path, size: int, mpp: float, seed: int = 0) -> Path:
    from pipeline.synth import write_synthetic_slide

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"synth_{size}px_{mpp}mpp_seed{seed}.svs"
    if not path.exists():
        print(f"generating {path.name} (once; cached in {cache}) ...", flush=True)
        t0 = time.perf_counter()
        write_synthetic_slide(path, width=size, height=size, mpp=mpp, seed=seed, tumor_fraction=0.3)
        print(f"  generated in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def tissue_tiles(slide_path: Path, out_dir: Path, n: int):
    """Tile with the real tiling stage, then take ``n`` patches (cycled if the slide has fewer)."""
    import numpy as np

    from pipeline.config import section
    from pipeline.features import read_tiles
    from pipeline.slides import open_slide, resolve_mpp
    from pipeline.tiling import run_tiling

    store = out_dir / f"{slide_path.stem}.tiles.zarr"
    if not store.exists():
        with open_slide(slide_path) as slide:
            mpp, source = resolve_mpp(slide)
            run_tiling(slide, mpp, source, section(None, "tiling"), 0.1, store)
    tiles = read_tiles(store)
    available = len(tiles.coords)
    if available < n:
        print(f"  note: the slide has {available} tissue patches; cycling them to reach {n}")
    tiles.coords = np.resize(tiles.coords, (n, 2)).astype(np.int32)
    return tiles, available


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model_only(encoder, batches, device, precision: str) -> float:
    """Seconds for the inference loop over pre-loaded uint8 batches (after one warm-up batch)."""
    from pipeline.features import encode_batches

    for _ in encode_batches(encoder, batches[:1], device, precision):
        pass
    sync(device)
    t0 = time.perf_counter()
    for _ in encode_batches(encoder, batches, device, precision):
        pass
    sync(device)
    return time.perf_counter() - t0


def time_read_only(slide_path: Path, tiles, options) -> float:
    from pipeline.patches import PatchChunks, chunk_size, make_loader

    size = chunk_size(options.batch_size, options.workers)
    dataset = PatchChunks(slide_path, tiles.coords, tiles.geometry(), size, tiles.attrs["reader"])
    t0 = time.perf_counter()
    for _ in make_loader(dataset, options.workers, pin_memory=False):
        pass
    dataset.close()
    return time.perf_counter() - t0


def time_end_to_end(slide_path: Path, tiles, encoder, options, out: Path) -> float:
    from pipeline.features import extract_features

    t0 = time.perf_counter()
    extract_features(slide_path, tiles, out, encoder, options)
    return time.perf_counter() - t0


def preload(slide_path: Path, tiles, batch_size: int, pin: bool) -> list:
    from pipeline.patches import PatchChunks

    dataset = PatchChunks(slide_path, tiles.coords, tiles.geometry(), batch_size)
    batches = [dataset[i] for i in range(len(dataset))]
    dataset.close()
    return [b.pin_memory() for b in batches] if pin else batches


def bench_encoder(name: str, args, slide_path: Path, tiles, work: Path) -> list[dict]:
    import torch

    from pipeline.device import device_name, resolve_device, resolve_precision
    from pipeline.encoders import create_encoder
    from pipeline.features import ExtractOptions
    from pipeline.patches import configure_threads

    weights = "pretrained" if name == "efficientnet_lite0" else "random"
    encoder = create_encoder(name, weights)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device, encoder.spec.precision)
    encoder = encoder.to(device)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    n = len(tiles.coords)
    batches = preload(slide_path, tiles, args.batch_size, device.type == "cuda")
    warm = replace(tiles, coords=tiles.coords[: 2 * args.batch_size])
    rows = []
    for workers in args.workers:
        options = ExtractOptions(
            batch_size=args.batch_size,
            workers=workers,
            device=args.device,
            precision=args.precision,
            dtype="float16",
        )
        read = time_read_only(slide_path, tiles, options)
        time_end_to_end(slide_path, warm, encoder, options, work / f"warm_{name}.zarr")
        best = {"model": [], "model_all": [], "e2e": []}
        for _ in range(args.repeat):  # interleaved, best of each: the machine's load drifts
            all_cores = configure_threads(0)["model_threads"]
            best["model_all"].append(time_model_only(encoder, batches, device, precision))
            threads = configure_threads(workers)
            best["model"].append(time_model_only(encoder, batches, device, precision))
            best["e2e"].append(
                time_end_to_end(slide_path, tiles, encoder, options, work / f"{name}.zarr")
            )
        model_same, model_all, e2e = (min(best[k]) for k in ("model", "model_all", "e2e"))
        rows.append(
            {
                "encoder": name,
                "device": device_name(device),
                "precision": precision,
                "batch_size": args.batch_size,
                "patches": n,
                "repeats": args.repeat,
                "workers": workers,
                "model_threads": threads["model_threads"],
                "all_cores_threads": all_cores,
                "end_to_end_pps": n / e2e,
                "model_only_pps": n / model_same,
                "model_only_all_cores_pps": n / model_all,
                "read_only_pps": n / read,
                "ratio": model_same / e2e,
                "ratio_all_cores": model_all / e2e,
                "seconds": {k: [round(t, 3) for t in v] for k, v in best.items()},
            }
        )
        print_row(rows[-1])
    return rows


HEADER = (
    f"{'encoder':<19}{'device':<10}{'prec':<6}{'batch':>6}{'workers':>8}{'model thr':>10}"
    f"{'e2e p/s':>10}{'model p/s':>10}{'ratio':>7}{'model(all) p/s':>15}{'ratio(all)':>11}"
    f"{'read p/s':>10}"
)


def print_row(r: dict) -> None:
    print(
        f"{r['encoder']:<19}{r['device'][:9]:<10}{r['precision']:<6}{r['batch_size']:>6}"
        f"{r['workers']:>8}{r['model_threads']:>10}{r['end_to_end_pps']:>10.1f}"
        f"{r['model_only_pps']:>10.1f}{r['ratio']:>7.2f}{r['model_only_all_cores_pps']:>15.1f}"
        f"{r['ratio_all_cores']:>11.2f}{r['read_only_pps']:>10.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--encoders", help="comma-separated (default: by device)")
    parser.add_argument("--batch-size", type=int, help="default 32 on CPU, 256 on CUDA")
    parser.add_argument("--workers", help="comma-separated worker counts to try")
    parser.add_argument("--patches", type=int, help="default 128 on CPU, 4096 on CUDA")
    parser.add_argument(
        "--slide-size", type=int, help="px per side (default 12288 CPU, 32768 CUDA)"
    )
    parser.add_argument("--mpp", type=float, default=0.25, help="slide µm/px (0.25 = 40×)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; best of each")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "wsi-mil-bench")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument(
        "--cohort",
        type=int,
        metavar="N",
        help="cohort mode: N small synthetic slides end to end through the workflow (Snakemake, "
        "default settings, efficientnet_lite0) vs model-only compute on the same patches",
    )
    parser.add_argument("--cohort-slide-size", type=int, default=6144, help="px per side")
    args = parser.parse_args(argv)
    if args.cohort:
        from features_cohort import run_cohort

        return run_cohort(args)

    cuda = args.device == "cuda"
    cores = len(os.sched_getaffinity(0))
    args.encoders = (
        args.encoders or ("resnet50_trunc,uni" if cuda else "efficientnet_lite0,resnet50_trunc")
    ).split(",")
    args.batch_size = args.batch_size or (256 if cuda else 32)
    args.patches = args.patches or (4096 if cuda else 128)
    args.slide_size = args.slide_size or (32768 if cuda else 12288)
    default_workers = f"{max(1, cores - 2)}" if cuda else ",".join(map(str, range(min(cores, 3))))
    args.workers = [int(w) for w in (args.workers or default_workers).split(",")]

    from pipeline.log import setup_logging

    setup_logging()
    import logging

    logging.getLogger("pipeline").setLevel(logging.WARNING)  # keep the table readable
    import torch

    print(
        f"machine: {platform.node()} {platform.machine()}, {cores} usable cores "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    if cuda:
        print(f"gpu: {torch.cuda.get_device_name(0)}")
    slide_path = ensure_slide(args.cache, args.slide_size, args.mpp)
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        work = Path(tmp)
        tiles, available = tissue_tiles(slide_path, args.cache, args.patches)
        g = tiles.geometry()
        print(
            f"slide: {slide_path.name}, {available} tissue patches; each read as {g.read_size} px "
            f"at level {g.read_level} and resized to {g.patch_size} px; {args.patches} patches timed"
        )
        print("model threads = cores - workers; each worker decodes with 1 thread (torch, cv2)")
        print(HEADER)
        rows = []
        for name in args.encoders:
            rows += bench_encoder(name, args, slide_path, tiles, work)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
