"""envs/*.yaml: valid conda env files that name every package their stage imports, and the way
rules run the project's own package inside them (conda itself cannot run here)."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "workflow" / "rules"
ENVS = sorted((REPO / "envs").glob("*.yaml"))

# PyPI distribution -> conda-forge package, where the names differ
CONDA_NAME = {
    "torch": "pytorch",
    "opencv-python-headless": "opencv",
    "opencv-python": "opencv",
    "openslide-bin": "openslide",
    "matplotlib": "matplotlib-base",
    "pyyaml": "pyyaml",
    "pillow": "pillow",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def env_packages(path: Path) -> tuple[dict[str, str], set[str]]:
    """(conda name -> version spec, pip distribution names) of an env file."""
    data = yaml.safe_load(path.read_text())
    conda, pip = {}, set()
    for dep in data["dependencies"]:
        if isinstance(dep, dict):
            pip |= {canonical(re.split(r"[<>=!~ \[]", p)[0]) for p in dep["pip"]}
        else:
            name, _, version = dep.partition("=")
            conda[canonical(name)] = version
    return conda, pip


def rule_envs_and_commands() -> dict[str, set[str]]:
    """env file name -> the wsi-mil subcommands the rules using it call."""
    found: dict[str, set[str]] = {}
    for smk in RULES.glob("*.smk"):
        text = smk.read_text()
        for body in re.split(r"\nrule \w+:", text)[1:]:
            env = re.search(r'conda:\s*"([^"]+)"', body)
            shell = body.split("    shell:")[1]
            constant = re.fullmatch(r"\s*(\w+)\s*", shell)
            if constant:
                shell = text.split(f"{constant.group(1)} = ")[1]
            command = re.search(r'"wsi-mil ([\w-]+)', shell).group(1)
            assert env, f"a rule in {smk.name} has no conda env"
            resolved = (smk.parent / env.group(1)).resolve()
            assert resolved.is_file(), f"{smk.name}: {env.group(1)} does not exist"
            found.setdefault(resolved.name, set()).add(command)
    return found


def _module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules imported by a file (skipping optional imports guarded by ``except ImportError``)."""
    tree = ast.parse(path.read_text())
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def third_party_imports(commands: set[str]) -> set[str]:
    """Top-level third-party modules the given commands import, following pipeline modules.

    The stage's own commands count in full (their ``run`` imports the heavy libraries); every
    other command module only with its module-level imports, since the CLI imports them all.
    """
    all_commands = {p.stem for p in (REPO / "pipeline" / "commands").glob("*.py")}
    start = [(f"pipeline.commands.{c.replace('-', '_')}", False) for c in commands]
    start += [(f"pipeline.commands.{c}", True) for c in all_commands]
    start += [("pipeline.cli", True), ("pipeline.__main__", True)]
    seen, found, todo = set(), set(), list(start)
    while todo:
        name, top_only = todo.pop()
        if (name, top_only) in seen:
            continue
        seen.add((name, top_only))
        path = _module_file(name)
        if path is None:
            continue
        for imported in _imports(path, top_only):
            root = imported.split(".")[0]
            if root == "pipeline":
                todo.append((imported, top_only))  # import-time imports stay import-time
            elif root not in sys.stdlib_module_names:
                found.add(root)
    return found


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_file_is_a_pinned_conda_forge_env(env_file):
    data = yaml.safe_load(env_file.read_text())
    assert data["channels"][0] == "conda-forge" and "defaults" not in data["channels"]
    conda, _ = env_packages(env_file)
    assert conda.get("python") == "3.11" and "pip" in conda
    for name, version in conda.items():
        if name != "pip":
            assert re.fullmatch(r"\d+(\.\d+)*", version), f"{env_file.name}: {name} is not pinned"


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_names_every_package_its_stage_imports(env_file):
    commands = rule_envs_and_commands().get(env_file.name)
    assert commands, f"no rule uses {env_file.name}"
    conda, pip = env_packages(env_file)
    dists = metadata.packages_distributions()
    missing = []
    for module in sorted(third_party_imports(commands)):
        assert module in dists, f"{module} is imported but not installed"
        for dist in dists[module]:
            name = canonical(dist)
            if CONDA_NAME.get(name, name) not in conda and name not in pip:
                missing.append(f"{module} ({dist})")
    assert not missing, f"{env_file.name} lacks {', '.join(missing)} (used by {sorted(commands)})"


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_pins_satisfy_the_package_requirements(env_file):
    """A pin below pyproject's lower bound would build an env the code does not run in."""
    text = (REPO / "pyproject.toml").read_text()
    bounds = dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', text))
    conda, _ = env_packages(env_file)
    for dist, low in bounds.items():
        name = CONDA_NAME.get(canonical(dist), canonical(dist))
        if name in conda:
            pin = tuple(int(x) for x in conda[name].split("."))
            floor = tuple(int(x) for x in low.split("."))[: len(pin)]
            assert pin >= floor, f"{env_file.name}: {name}={conda[name]} < {low}"


def test_rules_run_the_project_package_inside_an_env_that_lacks_it(tmp_path):
    """Under --use-conda the rules' PATH starts with workflow/scripts, whose `wsi-mil` runs this
    checkout with the env's python. Simulate an env: a python with the dependencies but without
    the package installed."""
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = next(env_dir.glob("lib/python*/site-packages"))
    deps = next(Path(sys.prefix).glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(f"{deps}\n")  # dependencies only: the editable hook is not run
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    control = subprocess.run(
        ["python", "-c", "import pipeline"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert control.returncode != 0 and "No module named 'pipeline'" in control.stderr
    common = (RULES / "common.smk").read_text()
    assert 'WORKFLOW_ROOT / "workflow" / "scripts"' in common  # what the conda shell prefix adds
    env["PATH"] = f"{REPO / 'workflow' / 'scripts'}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["wsi-mil", "check-config", str(REPO / "config.yaml")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "config.yaml: OK" in proc.stdout + proc.stderr
