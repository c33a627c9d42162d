"""Issue 17, item 4: the synthetic slide cohort's survival task end to end, with enough cases to mean something.

``wsi-mil synth`` writes ~64 small cases (80 slides, a quarter of the cases with two) whose event times
are driven by tumour burden (``pipeline/synth/cohort.py``'s SURVIVAL_MODEL); the workflow tiles them,
embeds them with efficientnet_lite0 on CPU and trains the survival task with the mean-pool reference
(``meanpool``), honest AB-MIL (``abmil_std``) and published AB-MIL (``abmil``), 5 folds by case, heatmaps
off. Printed per method: the C-index over the test folds (mean, t-interval over folds, as the
workflow's summary.csv), next to two lines computed here on the very same folds: the C-index of the
cohort's true risk (the planted burden: the ceiling) and the Cox reference on standardised bag means
(``pipeline/mil/reference.py``). Measured: 20 min for the workflow on the shared 2-core VM (next to
another workflow run), then ~5 min for the Cox reference (ridge Cox on 1280-d bag means, Newton steps
over a 1280 x 1280 Hessian); numbers in BENCHMARKS.md (issue 17).

    nice -n 10 python bench/survival_cohort.py [--work /tmp/survival_cohort] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ENCODER, TASK = "efficientnet_lite0", "survival"
METHODS = ["meanpool", "abmil_std", "abmil"]


def run(cmd: list[str], cwd: Path) -> float:
    env = dict(os.environ, SLURM_CONF=os.devnull)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def write_config(work: Path, data: Path, args) -> Path:
    import yaml

    config = {
        "slides_dir": str(data / "slides"),
        "results_dir": str(work / "results"),
        "tasks": [
            {
                "name": TASK,
                "type": "survival",
                "table": str(data / "survival.csv"),
                "slides_table": str(data / "labels.csv"),
            }
        ],
        "features": {"encoders": [ENCODER], "batch_size": 32, "workers": 0, "device": "cpu"},
        "mil": {
            "methods": METHODS,
            "folds": 5,
            "epochs": args.epochs,
            "patience": args.patience,
        },
        "heatmaps": {"enabled": False},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def case_burden(data: Path) -> pd.Series:
    """The planted risk: a case's burden = mean tumour fraction of its slides (0 for normal cases)."""
    info = json.loads((data / "cohort.json").read_text())
    slides = pd.DataFrame(info["slides"])
    return slides.groupby("case_id")["tumor_fraction"].mean()


def fold_lines(work: Path, data: Path) -> dict[str, list[float]]:
    """Per-fold test C-index of the true risk and of the Cox reference on bag means (same folds)."""
    from pipeline.layout import Layout
    from pipeline.mil.data import FeatureBank
    from pipeline.mil.reference import reference_scores
    from pipeline.mil.splits import fold_roles
    from pipeline.mil.tasks import SurvivalTask
    from pipeline.mil.train import assign_roles
    from pipeline.stats.metrics import concordance_index

    out = Layout(str(work / "results"))
    task = SurvivalTask.from_csv(data / "survival.csv", data / "labels.csv")
    bags = task.make_bags(FeatureBank.load(out.features_dir(ENCODER), task.wanted_slides()))
    splits = pd.read_csv(out.splits(TASK))
    burden = case_burden(data)
    lines: dict[str, list[float]] = {"true risk (burden)": [], "Cox on bag means": []}
    for fold in sorted(splits["fold"].unique()):
        parts = assign_roles(bags, fold_roles(splits, fold))
        train, test = parts["train"] + parts["val"], parts["test"]
        t = np.array([b.target[1] for b in test])
        e = np.array([b.target[2] for b in test])
        truth = np.array([burden[b.case_id] for b in test])
        lines["true risk (burden)"].append(concordance_index(t, e, truth))
        lines["Cox on bag means"].append(
            concordance_index(t, e, reference_scores("survival", train, test))
        )
    return lines


def method_folds(work: Path, method: str) -> list[float]:
    from pipeline.layout import Layout

    summary = json.loads(
        Path(Layout(str(work / "results")).summary_json(TASK, ENCODER, method)).read_text()
    )
    return [f["test"]["c_index"] for f in summary["per_fold"]]


def table(work: Path, data: Path) -> str:
    from pipeline.stats.repeated import repeated_cv_interval

    rows = fold_lines(work, data)
    rows.update({m: method_folds(work, m) for m in METHODS})
    lines = ["| line | C-index (mean over 5 test folds) | 95 % t-interval over folds | folds |"]
    lines.append("|---|---|---|---|")
    for name, values in rows.items():
        ci = repeated_cv_interval(values, bounds=(0.0, 1.0))
        folds = ", ".join(f"{v:.3f}" for v in values)
        lines.append(
            f"| {name} | {ci['mean']:.3f} | [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}] | {folds} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/survival_cohort"))
    p.add_argument("--slides", type=int, default=80)
    p.add_argument("--size-scale", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=15)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    work = args.work.resolve()
    data = work / "data"
    work.mkdir(parents=True, exist_ok=True)
    synth = [sys.executable, "-m", "pipeline.cli", "synth", str(data), "--slides", str(args.slides)]
    synth += ["--seed", str(args.seed), "--size-scale", str(args.size_scale), "--workers", "2"]
    seconds = {"synth": run(synth, REPO)}
    config = write_config(work, data, args)
    smk = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
    ]
    smk += ["--configfile", str(config), "--cores", str(args.cores), "--set-threads", "train=1"]
    seconds["workflow"] = run([*smk, "--quiet", "all"], REPO)
    n_cases = len(pd.read_csv(data / "survival.csv"))
    print(f"{n_cases} cases, {args.slides} slides; wall seconds: {seconds}")
    print(table(work, data))


if __name__ == "__main__":
    main()
