"""The browser library the viewer pages load: OpenSeadragon, installed from npm by the project's setup.

``make venv`` runs ``npm ci`` on the repository's ``package.json`` / ``package-lock.json``, which puts
OpenSeadragon's build under ``node_modules/openseadragon/build/openseadragon``; ``WSI_MIL_OPENSEADRAGON``
names another copy of that folder. The viewer job copies ``openseadragon.min.js`` and its button
images next to the pages, with our own ``viewer.js`` and ``viewer.css``, so the report folder can be
moved or zipped and still opens from disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.errors import ConfigError

ENV = "WSI_MIL_OPENSEADRAGON"
STATIC = Path(__file__).resolve().parent / "static"
LIB = "lib"  # the pages' folder for scripts, styles and images


def openseadragon_dir() -> Path:
    """OpenSeadragon's build folder (``openseadragon.min.js`` + ``images/``); one line when missing."""
    if os.environ.get(ENV):
        candidates = [Path(os.environ[ENV])]
    else:
        root = Path(__file__).resolve().parents[2]
        candidates = [root / "node_modules" / "openseadragon" / "build" / "openseadragon"]
    for folder in candidates:
        if (folder / "openseadragon.min.js").is_file():
            return folder
    raise ConfigError(
        candidates[0],
        "OpenSeadragon is not installed (the slide viewer needs it)",
        f"Run `make venv` (npm ci) in the repository, set {ENV} to its build folder, "
        "or set viewer.enabled: false.",
    )


def copy_assets(outdir: Path) -> None:
    """Put OpenSeadragon and the viewer's script and style into ``outdir/lib``."""
    source = openseadragon_dir()
    lib = outdir / LIB
    lib.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "openseadragon.min.js", lib / "openseadragon.min.js")
    shutil.copytree(source / "images", lib / "images", dirs_exist_ok=True)
    licence = source.parents[1] / "LICENSE.txt"  # BSD-3: the notice travels with the copy
    if licence.is_file():
        shutil.copy2(licence, lib / "openseadragon-LICENSE.txt")
    for name in ("viewer.js", "viewer.css", "index.js"):
        shutil.copy2(STATIC / name, lib / name)
