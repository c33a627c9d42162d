"""The GPU check, in one call: feature extraction and MIL training speed on a CUDA machine.

Prints, in the format of BENCHMARKS.md:

1. feature extraction, end-to-end vs model-only patches/s, for ``resnet50_trunc`` and the UNI
   architecture (ViT-L/16; random weights: speed does not depend on them), bf16, batch 256, from a
   synthetic 40× SVS (bench/features.py does the measuring);
2. MIL training, seconds per epoch and peak GPU memory, for abmil, mhim_abmil, transmil and
   mhim_transmil on a CAMELYON16-sized synthetic set (270 bags of ~8000 × 1024 features, batch 1,
   Adam, bf16 autocast as ``mil.precision: auto`` picks on a bf16 GPU), next to the MHIM-MIL paper's
   Table 6 (RTX 3090).

Meant to finish in under 8 minutes on an H100/H200. ``--smoke`` runs the same code on CPU with tiny
sizes in seconds (CI runs it, so the script keeps working between GPU sessions).

    bench/gpu.sh                      # on the GPU machine (installs the carried wheels first)
    python bench/gpu.py --smoke       # anywhere
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the pipeline package of this checkout
sys.path.insert(0, str(HERE))  # bench/features.py

# MHIM-MIL paper, Table 6 (RTX 3090, CAMELYON16): seconds per epoch and GPU memory (GB)
PAPER = {
    "abmil": (3.1, 2.3),
    "mhim_abmil": (4.3, 2.8),
    "transmil": (13.2, 10.6),
    "mhim_transmil": (10.5, 5.6),
}
METHODS = list(PAPER)


def extraction(args, device: str) -> None:
    import features as feature_bench  # bench/features.py

    smoke = args.smoke
    argv = [
        "--device",
        device,
        "--encoders",
        "resnet50_trunc" if smoke else "resnet50_trunc,uni",
        "--batch-size",
        "4" if smoke else "256",
        "--patches",
        "8" if smoke else str(args.patches),
        "--slide-size",
        "4096" if smoke else str(args.slide_size),
        "--repeat",
        "1" if smoke else "2",
        "--workers",
        "0" if smoke else str(max(1, len(os.sched_getaffinity(0)) - 2)),
        "--cache",
        str(args.cache),
    ]
    if device == "cuda":
        argv += ["--precision", "bf16"]
    print("\n### Features (bench/features.py " + " ".join(argv) + ")\n", flush=True)
    feature_bench.main(argv)


def make_bags(n_bags: int, n_instances: int, dim: int, device, seed: int = 0):
    """float16 bags of N(0,1) features made on ``device`` (fast), sizes ±10 % around n_instances."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    sizes = torch.randint(
        int(n_instances * 0.9), int(n_instances * 1.1) + 1, (n_bags,), generator=gen, device=device
    ).tolist()
    bags = [torch.randn(n, dim, generator=gen, device=device, dtype=torch.float16) for n in sizes]
    return bags, [i % 2 for i in range(n_bags)]


def train_epochs(method: str, bags, labels, device, epochs: int) -> dict:
    """Seconds of the fastest epoch after the first, and peak GPU memory beyond the bags."""
    import torch
    import torch.nn.functional as F

    from pipeline.device import resolve_precision
    from pipeline.mil.loop import make_optimizer, train_step
    from pipeline.mil.models import create_mil_model, method_info

    torch.manual_seed(0)
    dim = bags[0].shape[1]
    model = create_mil_model(method, dim, 2, {})
    if model.needs_teacher:
        baseline = create_mil_model(method_info(method)["baseline"], dim, 2, {})
        model.load_teacher(baseline.state_dict())
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, lr=2e-4, weight_decay=1e-5)
    precision = resolve_precision("auto", device, "bf16", "mil.precision", ("auto", "fp32", "bf16"))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    targets = [torch.tensor([y], device=device) for y in labels]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    model.train()
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for i, (x, t) in enumerate(zip(bags, targets, strict=True)):
            loss = lambda logits, t=t: F.cross_entropy(logits, t)  # noqa: E731
            train_step(model, optimizer, x.to(dtype), loss, i / len(bags), precision)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - resident) / 2**30 if cuda else float("nan")
    steady = times[1:] or times
    return {"method": method, "precision": precision, "s_per_epoch": min(steady), "peak_gb": peak}


def mil(args, device) -> None:
    import torch

    n_bags, n_inst = (2, 32) if args.smoke else (args.bags, args.instances)
    epochs = 1 if args.smoke else 2
    print(
        f"\n### MIL training: {n_bags} bags of ~{n_inst} × 1024 features, batch 1, "
        f"{epochs} epoch(s), fastest after the first\n",
        flush=True,
    )
    t0 = time.perf_counter()
    bags, labels = make_bags(n_bags, n_inst, 1024, device)
    bank_gb = sum(b.numel() * 2 for b in bags) / 2**30
    print(f"bags made on {device} in {time.perf_counter() - t0:.1f} s ({bank_gb:.1f} GB float16)")
    print(
        "\n| method | precision | s/epoch | peak GPU memory GB | paper s/epoch (3090) | paper GB |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for method in METHODS:
        row = train_epochs(method, bags, labels, device, epochs)
        paper_s, paper_gb = PAPER[method]
        print(
            f"| {method} | {row['precision']} | {row['s_per_epoch']:.2f} | "
            f"{row['peak_gb']:.2f} | {paper_s} | {paper_gb} |",
            flush=True,
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(
        "\nPeak GPU memory is torch's peak allocation during training minus the resident bags "
        "(the paper's loader keeps features on the host)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, seconds")
    parser.add_argument("--skip-features", action="store_true")
    parser.add_argument("--skip-mil", action="store_true")
    parser.add_argument("--patches", type=int, default=4096)
    parser.add_argument("--slide-size", type=int, default=24576, help="synthetic 40× slide side")
    parser.add_argument("--bags", type=int, default=270)
    parser.add_argument("--instances", type=int, default=8000)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "wsi-mil-bench")
    args = parser.parse_args(argv)

    import platform

    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA GPU visible: run with --smoke, or on a GPU machine", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    gpu = torch.cuda.get_device_name(0) if cuda else "none (smoke run on CPU)"
    print(
        f"## GPU check ({time.strftime('%Y-%m-%d %H:%M')}): {platform.node()}, GPU {gpu}, "
        f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )
    start = time.perf_counter()
    if not args.skip_features:
        extraction(args, device.type)
    if not args.skip_mil:
        mil(args, device)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
