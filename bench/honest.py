"""Honest model selection vs the optimistic protocol vs the mean-pool reference, on the same folds (issue 17).

For each synthetic set of ``bench/honest_sets.py``: 5 outer folds by case (``make_splits``: the test fold,
a 15 % validation part carved from the rest for the holdout protocol). Every variant sees the same folds:

* ``reference``: logistic regression / ridge Cox (alpha 1) on standardised bag means (train+val -> test);
* ``meanpool``: the ``meanpool`` method through the trainer (holdout protocol);
* ``holdout``: ``--method`` with today's protocol (val part selects the epoch, patience);
* ``paper``: ``--method`` with ``protocol=paper`` (the test fold selects the epoch: OPTIMISTIC);
* ``inner_cv`` / ``ensemble`` / ``inner_cv_swa`` / ``fixed``: :mod:`pipeline.mil.selection` on train+val.

Each (set, fold, variant) is appended to ``--out`` (JSON lines) as soon as it is done, so a partial run
still counts; ``--summary`` prints the mean ± std table over folds from that file.

    nice python bench/honest.py --sets dense-120,sparse-120,survival-160 --epochs 50 --out bench/results/honest.jsonl
    python bench/honest.py --summary bench/results/honest.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from honest_sets import SETS, true_risk_c_index  # noqa: E402

from pipeline.stats.metrics import auc, concordance_index  # noqa: E402

SELECTED = ("inner_cv", "ensemble", "inner_cv_swa", "fixed", "ensemble_full")
VARIANTS = ("reference", "meanpool", "holdout", "paper", *SELECTED)


def score(task, bags, values) -> float:
    """AUC of positive-class scores, or C-index of risks, on ``bags``."""
    values = np.asarray(values)
    if task.type == "classification":
        labels = np.array([int(b.target) for b in bags])
        v = values if values.ndim == 1 else values[:, -1]
        return auc(labels, np.stack([1 - v, v], axis=1))
    t = np.array([b.target[1] for b in bags])
    e = np.array([b.target[2] for b in bags])
    return concordance_index(t, e, values if values.ndim == 1 else values[:, 0])


def base_cfg(args, overrides=()):
    from pipeline.settings import mil_settings

    items = [
        f"epochs={args.epochs}",
        f"hidden_dim={args.hidden_dim}",
        f"lr={args.lr}",
        f"patience={args.patience}",
        "precision=fp32",
        *overrides,
    ]
    return mil_settings(None, items)


def run_fold(s, splits, fold, variants, args, overrides, emit) -> None:
    from pipeline.mil.models import create_mil_model
    from pipeline.mil.precision import seed_everything
    from pipeline.mil.reference import reference_scores
    from pipeline.mil.selection import fit_selected
    from pipeline.mil.splits import fold_roles
    from pipeline.mil.train import assign_roles, train_fold

    task, bags = s.task, s.bags
    parts = assign_roles(bags, fold_roles(splits, fold))
    train, test = parts["train"] + parts["val"], parts["test"]
    cfg = base_cfg(args, overrides)
    task.configure(cfg)
    task.fit(train)
    task.encode(bags)
    device = torch.device("cpu")
    if "reference" in variants:
        t0 = time.perf_counter()
        emit("reference", score(task, test, reference_scores(task.type, train, test)), t0)
    for name, method, protocol in (
        ("meanpool", "meanpool", "holdout"),
        ("holdout", args.method, "holdout"),
        ("paper", args.method, "paper"),
    ):
        if name in variants:
            t0 = time.perf_counter()
            c = cfg.replace(protocol=protocol, selection="holdout")
            m = train_fold(task, bags, splits, fold, method, c, device=device).metrics
            emit(name, m["test"][task.metric_name], t0, best_epoch=m["best_epoch"])
    wanted = [v for v in variants if v in SELECTED]
    if wanted:
        t0 = time.perf_counter()
        seed_everything(cfg.seed)
        d = bags[0].features().shape[1]

        def build(_inner=None):
            return create_mil_model(args.method, d, task.n_outputs, cfg)

        sel = fit_selected(build, task, train, cfg, device, [b.case_id for b in test])
        for v in wanted:
            out = sel.variants[v].predict(task, test, device)
            emit(v, score(task, test, out), t0, best_epoch=sel.best_epoch)


def run(args) -> None:
    from pipeline.mil.splits import make_splits

    torch.set_num_threads(1)
    variants = args.variants.split(",")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.sets.split(","):
        s = SETS[name](args.seed)
        strata, val_strata = s.task.case_strata()
        splits = make_splits(strata, folds=args.folds, seed=args.seed, val_strata=val_strata)
        info = {"set": name, "tag": args.tag, "method": args.method, "overrides": args.override}
        if s.task.type == "survival":
            info["true_c_index"] = true_risk_c_index(s)
        for fold in (
            [int(f) for f in args.fold_list.split(",")] if args.fold_list else range(args.folds)
        ):

            def emit(variant, value, t0, info=info, fold=fold, **extra):
                row = {
                    **info,
                    "fold": fold,
                    "variant": variant,
                    "value": float(value),
                    "seconds": round(time.perf_counter() - t0, 1),
                    **extra,
                }
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)

            run_fold(s, splits, fold, variants, args, args.override, emit)


def summary(paths: str) -> None:
    """Markdown table, mean ± std over folds, of every (set, method, tag, variant) in the JSONL files."""
    import pandas as pd

    df = pd.concat([pd.read_json(p, lines=True) for p in paths.split(",")], ignore_index=True)
    df["tag"] = df["tag"].fillna("") if "tag" in df else ""
    keys = ["set", "method", "tag", "variant"]
    g = df.groupby(keys, sort=False)["value"]
    print("| set | method | tag | variant | mean ± std | folds |")
    print("|---|---|---|---|---|---|")
    for key, v in g:
        print("| " + " | ".join(map(str, key)) + f" | {v.mean():.3f} ± {v.std():.3f} | {len(v)} |")
    if "true_c_index" in df:
        for name, c in df.groupby("set")["true_c_index"].first().dropna().items():
            print(f"\ntrue-risk C-index of {name}: {c:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sets", default="dense-120,sparse-120,survival-160")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--method", default="abmil")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=30)
    p.add_argument("--hidden-dim", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fold-list", default="", help="run only these outer folds (e.g. 0,1): parallel runs"
    )
    p.add_argument("--tag", default="", help="label of this configuration in the table")
    p.add_argument("--override", nargs="*", default=[], help="mil keys, e.g. accumulate=32")
    p.add_argument("--out", default="bench/results/honest.jsonl")
    p.add_argument("--summary", metavar="JSONL[,JSONL...]")
    args = p.parse_args()
    if args.summary:
        summary(args.summary)
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
    run(args)


if __name__ == "__main__":
    main()
