"""Fixed cost of one extraction process before the first patch: import, build, load, fingerprint.

Every ``wsi-mil extract`` job pays this once; with one slide per process it is paid per slide. Each
measurement runs in a fresh Python process (so imports and the OS page cache are what a new job
sees, except that the weights file is already in the page cache after the first run) and reports:

* ``import``: ``import torch, timm`` plus the project's encoder module;
* ``create``: :func:`pipeline.encoders.create_encoder` from a local weights file (architecture build,
  state-dict read, strict load, sha256 fingerprint of the file);
* ``total``: both, wall clock.

The weights are random tensors saved once as safetensors in ``--cache`` (the speed of building and
loading does not depend on their values). Runs ``--repeat`` times per encoder and keeps the median;
the first run of each code tree starts with an empty fingerprint cache (``first create`` column).
``--tree`` compares code trees in the same run (e.g. an export of an older commit):

    .venv/bin/python bench/encoder_startup.py                           # resnet50_trunc, uni
    git archive 39a7a49 | tar -x -C /tmp/before
    .venv/bin/python bench/encoder_startup.py --tree /tmp/before --tree . --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch, timm
from pipeline.encoders import create_encoder
t1 = time.perf_counter()
encoder = create_encoder(sys.argv[1], sys.argv[2])
t2 = time.perf_counter()
assert encoder.provenance["weights_sha256"]
print(json.dumps({"import": t1 - t0, "create": t2 - t1, "total": t2 - t0}))
"""


def weights_file(name: str, cache: Path) -> Path:
    """A safetensors file holding random tensors shaped like the encoder's checkpoint."""
    import torch
    from safetensors.torch import save_file

    from pipeline.encoders import create_encoder

    path = cache / f"{name}-random.safetensors"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        state = create_encoder(name, "random").trunk.state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        del state
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return path


def measure(name: str, path: Path, repeat: int, env: dict, tree: Path) -> dict:
    runs = []
    env = dict(env, PYTHONPATH=str(tree.resolve()))
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, name, str(path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tree,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {k: statistics.median(r[k] for r in runs[1:] or runs) for k in runs[0]}
    return {**result, "first": runs[0]["create"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="resnet50_trunc,uni")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/wsi-mil-bench/startup"))
    parser.add_argument("--tree", type=Path, action="append", help="code tree(s) to time")
    args = parser.parse_args()
    trees = args.tree or [Path(__file__).resolve().parents[1]]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    print(
        f"{'tree':24} {'encoder':16} {'file MB':>8} {'import s':>9} {'first create s':>15} "
        f"{'create s':>9} {'total s':>8}"
    )
    for name in args.encoders.split(","):
        path = weights_file(name, args.cache)
        size = path.stat().st_size / 1e6
        for i, tree in enumerate(trees):
            home = args.cache / f"hf_home_{name}_{i}"  # empty fingerprint cache per tree
            shutil.rmtree(home, ignore_errors=True)
            r = measure(name, path, args.repeat, dict(env, HF_HOME=str(home)), tree)
            print(
                f"{str(tree)[-24:]:24} {name:16} {size:8.0f} {r['import']:9.2f} "
                f"{r['first']:15.2f} {r['create']:9.2f} {r['total']:8.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
