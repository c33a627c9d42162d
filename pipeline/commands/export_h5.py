"""Write feature stores as CLAM/TRIDENT h5 files (``features``, ``coords`` with their attributes).

One ``{slide}.h5`` per store in the output folder; the store's own attrs travel in the file, so
`wsi-mil import-h5` gives the same store back. See :mod:`pipeline.export.h5` for the layout.
"""

from __future__ import annotations

from pathlib import Path

HELP = "write feature stores (zarr) as CLAM/TRIDENT h5 files"


def add_arguments(parser) -> None:
    parser.add_argument("stores", type=Path, nargs="+", help="feature stores ({slide}.zarr)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")


def run(args) -> int:
    from pipeline.export.h5 import export_h5
    from pipeline.log import get_logger

    for store in args.stores:
        out = export_h5(store, args.output / f"{store.name.removesuffix('.zarr')}.h5")
        get_logger("export-h5", store.stem).info("wrote %s", out)
    return 0
