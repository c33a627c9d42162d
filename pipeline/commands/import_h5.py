"""Read CLAM/TRIDENT h5 feature files (``features``, ``coords``) into our zarr feature stores.

One ``{name}.zarr`` per file in the output folder; a file written by `wsi-mil export-h5` gives back
its store exactly, one from CLAM or TRIDENT gets the geometry its ``coords`` attributes record. See
:mod:`pipeline.export.h5`.
"""

from __future__ import annotations

from pathlib import Path

HELP = "read CLAM/TRIDENT h5 feature files into zarr feature stores"


def add_arguments(parser) -> None:
    parser.add_argument("files", type=Path, nargs="+", help="h5 feature files")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")


def run(args) -> int:
    from pipeline.export.h5 import import_h5
    from pipeline.log import get_logger

    for path in args.files:
        out = import_h5(path, args.output / f"{path.stem}.zarr")
        get_logger("import-h5", path.stem).info("wrote %s", out)
    return 0
