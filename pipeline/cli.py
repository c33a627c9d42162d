"""The `wsi-mil` command: one subcommand per module in :mod:`pipeline.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Commands are discovered, so a stage adds its command by adding a file, and heavy imports (torch,
openslide) happen inside ``run`` only, keeping ``wsi-mil --help`` instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys

from pipeline import __version__, commands, lifeline
from pipeline.errors import PipelineError, io_error
from pipeline.log import setup_logging


def _command_modules() -> dict[str, object]:
    found = {}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        found[getattr(module, "NAME", info.name.replace("_", "-"))] = module
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-mil",
        description="Whole-slide images to patches, features and MIL models.",
    )
    parser.add_argument("--version", action="version", version=f"wsi-mil {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _command_modules().items():
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=module.HELP, description=doc or module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    signal.signal(signal.SIGTERM, _terminate)
    lifeline.watch()  # under Snakemake: stop when the Snakemake process that started us is gone
    try:
        return int(args._run(args) or 0)
    except PipelineError as err:
        print(err.line(), file=sys.stderr)
        return 1
    except OSError as err:  # disk full, no permission, I/O error: one line naming the file
        print(io_error(err, getattr(args, "output", None)).line(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ERROR: interrupted; no partial output was published.", file=sys.stderr)
        return 130
    except Terminated:
        why = lifeline.reason[0] if lifeline.reason else "terminated (SIGTERM)"
        print(f"ERROR: {why}; no partial output was published.", file=sys.stderr)
        return 143


class Terminated(BaseException):
    """Raised on SIGTERM (Snakemake cancel, SLURM time limit) so temporary outputs are cleaned up."""


def _terminate(signum, frame):
    raise Terminated()


if __name__ == "__main__":
    sys.exit(main())
