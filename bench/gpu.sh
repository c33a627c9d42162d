#!/usr/bin/env bash
# The GPU check in one call (see bench/gpu.py): feature extraction and MIL training speed, printed
# in BENCHMARKS.md format. For a CUDA machine that has only torch, timm, opencv, pandas and
# huggingface_hub installed and no internet: the other wheels travel along in ./wheelhouse.
#
# Build the wheelhouse on a machine with internet, for the GPU machine's Python and platform:
#   pip download -d wheelhouse --python-version 3.11 --only-binary=:all: \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#       openslide-python openslide-bin tiffslide tifffile imagecodecs zarr pyyaml jsonschema \
#       scipy scikit-learn safetensors tqdm
# (plus their dependencies, which pip download fetches; add snakemake to run the workflow there).
# Then copy the repository with wheelhouse/ inside it and run:
#   bash bench/gpu.sh            # full check, < 11 minutes on an H100/H200 (train_cost.py: ~3)
#   bash bench/gpu.sh --smoke    # CPU, seconds (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [ -d wheelhouse ]; then
    "$PYTHON" -m pip install -q --no-index --find-links wheelhouse \
        openslide-python openslide-bin tiffslide tifffile imagecodecs zarr pyyaml jsonschema \
        scipy scikit-learn safetensors tqdm
fi
"$PYTHON" bench/gpu.py "$@"
# issue 23: the honest default's cost against one holdout model per fold, on the GPU, with the batched
# inner models checked against the one-at-a-time path (max |diff| per fold); ~3 minutes
case " $* " in
*" --smoke "*) ;;
*) "$PYTHON" bench/train_cost.py --device cuda --out bench/results/train_cost_gpu.jsonl ;;
esac
