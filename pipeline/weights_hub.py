"""Encoder weights on the Hugging Face hub: where a repository's files are, whether we may fetch
them, and the one line that says what to do when we may not.

The hub is reached only through ``huggingface_hub`` and only when weights are requested (never at
import). ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` are read at call time, not
at import, so a caller (or a test) that sets them late is still obeyed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, first_line

#: Weight files looked for, in order, in a hub repository or a local folder.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
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
