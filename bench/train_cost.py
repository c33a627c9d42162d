"""What the honest default costs: the ``ensemble_full`` selection against one holdout model per fold (issue 23).

On one seeded synthetic cohort sized like the demo (``bench/honest_sets.py``'s sparse set: ``--bags``
bags of 60-180 x 1280 features, the demo encoder's width; binary labels, the evidence 3-8 instances of
a positive bag, misleading salient instances in both classes), ``--folds`` outer folds by case, the demo's
MIL settings (``epochs=20 patience=10``, everything else the workflow default: width 512, dropout 0.25,
``precision: auto``), per method and fold, in this order and interleaved in one process, so the
machine's load hits every arm alike:

* ``holdout``: one model per fold, early stopping on the 15 % validation part (``selection=holdout``);
* ``ensemble_full``: the default (3 inner-CV models + the whole-training-part model) as it trains by
  default on the device: inner models one at a time on CPU, batched on CUDA (:mod:`pipeline.mil.stacked`);
* ``ensemble_full_other`` (on unless ``--no-other``): the same selection through the other path
  (``fit_selected(stacked=...)``: batched on CPU, one at a time on CUDA), its predictions compared
  with ``ensemble_full``'s (max abs difference printed) and its time with the default's.

MHIM-v2(AB-MIL)'s teacher is the ``abmil`` model of the same fold and arm (the holdout model for the
holdout arm, the ensemble's inner / whole models for the ensemble arms), as the workflow does. Each arm
(after one untimed warm-up training, which pays the process's one-off set-up) is timed by wall clock
and by this process's CPU time (``time.process_time``: what the arm itself
used, insensitive to other jobs on a shared machine). Per method it prints the ratio of summed times;
the last line is ``worst ensemble_full/holdout ratio = X`` (wall clock). Raw rows (one per method,
fold and arm) go to ``--out`` (JSON lines).

    nice .venv/bin/python bench/train_cost.py --out bench/results/train_cost.jsonl
    .venv/bin/python bench/train_cost.py --device cuda --out bench/results/train_cost_gpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # honest_sets

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from honest_sets import classification_set  # noqa: E402

METHODS = ("abmil", "abmil_std", "mhim_abmil")
TEACHER = {"mhim_abmil": "abmil"}


def run(args) -> list[dict]:
    from pipeline.mil import selection
    from pipeline.mil.splits import make_splits
    from pipeline.mil.train import train_fold
    from pipeline.settings import mil_settings

    torch.set_num_threads(args.threads)
    cohort = classification_set("sparse", args.bags, args.dim, args.seed, n_min=60, n_max=180)
    task, bags = cohort.task, cohort.bags
    strata, val_strata = task.case_strata()
    splits = make_splits(strata, args.folds, args.seed, 0.15, val_strata)
    base = [f"epochs={args.epochs}", f"patience={args.patience}"]
    arms = ["holdout", "ensemble_full"] + (["ensemble_full_other"] if args.other else [])
    other = torch.device(args.device).type != "cuda"  # `stacked` of the other path
    fit_selected = selection.fit_selected
    work = Path(tempfile.mkdtemp(prefix="train_cost_"))
    # warm-up, not timed: the first training in a process pays one-off set-up (lazy torch init)
    warm = mil_settings(None, ["epochs=1", "selection=holdout"])
    train_fold(task, bags, splits, 0, "abmil", warm, device=args.device)
    rows = []
    for fold in range(args.folds):
        for method in args.methods.split(","):
            order = arms if fold % 2 == 0 else arms[::-1]  # alternate who runs first
            preds = {}
            for arm in order:
                sel = "holdout" if arm == "holdout" else "ensemble_full"
                settings = mil_settings(None, [*base, f"selection={sel}"])
                teacher = None
                if method in TEACHER:  # the baseline of the same fold and selection
                    teacher = work / TEACHER[method] / ("holdout" if sel == "holdout" else sel)
                    teacher = teacher / f"fold{fold}"
                reference = arm == "ensemble_full_other"
                selection.fit_selected = (
                    (lambda *a, **k: fit_selected(*a, **{**k, "stacked": other}))
                    if reference
                    else fit_selected
                )
                out = work / method / sel / f"fold{fold}" if not reference else None
                wall, cpu = time.perf_counter(), time.process_time()
                result = train_fold(
                    task, bags, splits, fold, method, settings, outdir=out,
                    teacher_init=teacher, device=args.device,
                )  # fmt: skip
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                selection.fit_selected = fit_selected
                scores = result.predictions.filter(like="score_").to_numpy()
                preds[arm] = scores
                row = {
                    "method": method, "fold": fold, "arm": arm, "wall_s": wall, "cpu_s": cpu,
                    "best_epoch": result.metrics["best_epoch"],
                    "epochs_run": result.metrics["epochs_run"],
                    "test_auc": result.metrics["test"]["auc"],
                    "precision": result.metrics["efficiency"]["precision"],
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
            if "ensemble_full_other" in preds:
                diff = float(np.abs(preds["ensemble_full"] - preds["ensemble_full_other"]).max())
                rows[-1]["max_abs_diff_vs_default"] = diff
                print(f"fold {fold} {method}: the two paths' predictions, max |diff| {diff:.2e}")
    return rows


def summarise(rows: list[dict]) -> float:
    df = pd.DataFrame(rows)
    worst = 0.0
    for method, g in df.groupby("method", sort=False):
        t = g.groupby("arm")[["wall_s", "cpu_s"]].sum()
        ratio = t.loc["ensemble_full"] / t.loc["holdout"]
        line = (
            f"{method}: holdout {t.loc['holdout', 'wall_s']:.1f} s wall / "
            f"{t.loc['holdout', 'cpu_s']:.1f} s cpu, ensemble_full {t.loc['ensemble_full', 'wall_s']:.1f}"
            f" / {t.loc['ensemble_full', 'cpu_s']:.1f}: ensemble_full/holdout = {ratio['wall_s']:.2f}"
            f" wall, {ratio['cpu_s']:.2f} cpu"
        )
        if "ensemble_full_other" in t.index:
            ref = t.loc["ensemble_full_other"] / t.loc["holdout"]
            speed = t.loc["ensemble_full_other"] / t.loc["ensemble_full"]
            line += (
                f"; other path/holdout {ref['wall_s']:.2f} wall, {ref['cpu_s']:.2f} cpu"
                f" (other/default {speed['wall_s']:.2f} wall, {speed['cpu_s']:.2f} cpu)"
            )
        print(line)
        worst = max(worst, float(ratio["wall_s"]))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--bags", type=int, default=40)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-other", dest="other", action="store_false", help="skip the other path")
    p.add_argument("--out", default=None, help="JSON lines of the raw rows")
    args = p.parse_args()
    if "mhim_abmil" in args.methods.split(",") and "abmil" not in args.methods.split(","):
        p.error("mhim_abmil needs abmil (its teacher) in --methods")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, {vars(args)}")
    rows = run(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    worst = summarise(rows)
    print(f"worst ensemble_full/holdout ratio = {worst:.2f}")


if __name__ == "__main__":
    main()
