"""List the MIL methods `wsi-mil train --method` accepts, with their family and baseline.

A method with a baseline (MHIM-MIL) needs that baseline trained on the same fold first: its checkpoint
initialises the teacher (`wsi-mil train --teacher-init DIR`); `wsi-mil cv` and the workflow do this order.
"""

from __future__ import annotations

HELP = "list the MIL methods (name, family, baseline for the teacher, description)"


def add_arguments(parser) -> None:
    parser.add_argument("--names", action="store_true", help="print only the names, one per line")


def run(args) -> int:
    import textwrap

    from pipeline.methods import list_methods

    methods = list_methods()
    if args.names:
        print("\n".join(m["name"] for m in methods))
        return 0
    width = max(len(m["name"]) for m in methods)
    print(f"{'method':<{width}}  {'family':<9} {'baseline':<9} description")
    for m in methods:
        lines = textwrap.wrap(m["description"], 80) or [""]
        print(f"{m['name']:<{width}}  {m['family']:<9} {m['baseline'] or '-':<9} {lines[0]}")
        for line in lines[1:]:
            print(" " * (width + 22) + line)
    return 0
