"""The package map of docs/architecture.md §3 is what the code does: every import in ``pipeline/``
(those inside functions too) goes to a row its own row may import, and every such row is above it,
so imports go one way. The modules the workflow imports while parsing load neither torch nor pandas."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"
DOC = ROOT / "docs" / "architecture.md"


def section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def names(cell: str) -> list[str]:
    """The backticked module names of a table cell (``mil/`` -> ``mil``)."""
    return [n.rstrip("/") for n in re.findall(r"`([^`]+)`", cell)]


def package_map() -> list[tuple[list[str], str]]:
    """The table's rows in order: (the modules of the row, its 'may import' cell)."""
    rows = []
    for line in section("3. Package map").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.append((names(cells[0]), cells[2]))
    return rows


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every ``pipeline.*`` module ``path`` imports, at module level or inside a function."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names}
            modules = {m for m in subs if _is_module(m)}
            found |= modules | ({base} if modules != subs else set())
    return {m for m in found if m == "pipeline" or m.startswith("pipeline.")}


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def row_of(module: str, rows) -> int:
    """Index of the row owning ``module`` (the longest row name that prefixes it)."""
    rel = module.removeprefix("pipeline").lstrip(".") or "pipeline"
    best, length = None, -1
    for i, (mods, _) in enumerate(rows):
        for m in mods:
            if (rel == m or rel.startswith(m + ".")) and len(m) > length:
                best, length = i, len(m)
    assert best is not None, f"{module} is in no row of docs/architecture.md §3"
    return best


def test_every_import_follows_the_package_map():
    rows = package_map()
    assert len(rows) > 15  # the table was found
    allowed = []
    for i, (mods, cell) in enumerate(rows):
        if "any row above" in cell:
            allowed.append(set(range(i)))
            continue
        targets = {row_of("pipeline." + n, rows) for n in names(cell)}
        above = sorted(rows[t][0][0] for t in targets if t >= i)
        assert not above, f"row {mods} may import rows that are not above it: {above}"
        allowed.append(targets)
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = row_of(module_name(path), rows)
        for target in sorted(imports(path)):
            t = row_of(target, rows)
            if t != me and t not in allowed[me]:
                problems.append(f"{module_name(path)} imports {target} ({rows[me][0][0]} row)")
    assert not problems, "\n".join(problems)


def test_parse_time_modules_import_neither_torch_nor_pandas():
    """§3's last paragraph: the modules the workflow imports while parsing stay light."""
    text = section("3. Package map")
    paragraph = next(p for p in text.split("\n\n") if "import neither torch nor pandas" in p)
    light = names(paragraph.split("import neither")[0])
    assert "layout" in light and "config" in light
    code = (
        "import importlib, sys\n"
        f"for name in {light!r}:\n"
        "    importlib.import_module('pipeline.' + name)\n"
        "heavy = sorted({'torch', 'pandas'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
