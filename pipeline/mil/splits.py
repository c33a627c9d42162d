"""K-fold splits by case, stratified, with a validation part carved from each training part.

File format (``results/splits/{task}.csv``; docs/architecture.md, "Data contracts"): one row per (case, fold) with columns
``case_id, fold, role``; ``fold`` is 0..K-1 and ``role`` is ``train``, ``val`` or ``test``. So a 5-fold
file has 5 rows per case: ``test`` in exactly one fold, ``val`` or ``train`` in the others. Every method
of a task reads the same file, so all of them see the same folds; slides follow their case (a case never
straddles train and test).

Test folds come from scikit-learn's ``StratifiedKFold`` over one stratum label per case (class for
classification; event x time bin for survival). The validation part of each fold is drawn per stratum
(largest deficit first, at least one case of every stratum that has two or more training cases when the
budget allows), so a small validation part still holds every class.

Repeated cross-validation (``mil.repeats`` = R) makes R such files, repeat r with seed
:func:`repeat_seed` (``seed + r``): repeat 0 is the single-repeat split, so adding repeats keeps it.
Each file is a complete K-fold split by case, so within a repeat no case straddles folds.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.log import get_logger

ROLES = ("train", "val", "test")
log = get_logger("splits")


def _allocate(counts: pd.Series, n_take: int) -> dict[str, int]:
    """How many cases to take from each stratum: >= 1 per stratum of size >= 2 when possible, rest by deficit."""
    total = counts.sum()
    alloc = dict.fromkeys(counts.index, 0)
    eligible = [s for s in counts.index if counts[s] >= 2]
    if n_take >= len(eligible):
        for s in eligible:
            alloc[s] = 1
    while sum(alloc.values()) < n_take:
        candidates = [s for s in counts.index if alloc[s] < counts[s] - 1]
        if not candidates:
            candidates = [s for s in counts.index if alloc[s] < counts[s]]
        if not candidates:
            break
        # the first stratum (in sorted order) with the largest shortfall: deterministic
        best = max(candidates, key=lambda s: counts[s] * n_take / total - alloc[s])
        alloc[best] += 1
    return alloc


def carve_validation(
    cases: np.ndarray, strata: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean mask over ``cases``: the stratified validation part (``round(fraction * n)``, at least 1)."""
    cases = np.asarray(cases)
    strata = np.asarray(strata).astype(str)
    n_take = max(1, int(round(fraction * len(cases)))) if len(cases) >= 2 else 0
    counts = pd.Series(strata).value_counts().sort_index()
    mask = np.zeros(len(cases), dtype=bool)
    for stratum, k in _allocate(counts, n_take).items():
        if k:
            idx = np.flatnonzero(strata == stratum)
            mask[rng.permutation(idx)[:k]] = True
    return mask


def make_splits(
    strata: pd.Series,
    folds: int = 5,
    seed: int = 0,
    val_fraction: float = 0.15,
    val_strata: pd.Series | None = None,
) -> pd.DataFrame:
    """Folds over the cases (the index of ``strata``), stratified by its values; see the module docstring.

    ``val_strata`` (default ``strata``) stratifies the validation part; survival uses the event alone
    there, since event x bin strata are too fine for a part of a few cases.
    """
    from sklearn.model_selection import StratifiedKFold

    strata = strata.astype(str).sort_index()
    val_strata = (strata if val_strata is None else val_strata.astype(str)).reindex(strata.index)
    cases = strata.index.to_numpy()
    if len(cases) < folds:
        raise PipelineError(
            "splits",
            f"{len(cases)} cases cannot be split into {folds} folds",
            "Use fewer folds (--folds) or add cases.",
        )
    counts = strata.value_counts()
    if counts.min() < folds:
        log.warning(
            "stratum %s has only %d case(s) for %d folds; some test folds will lack it",
            counts.idxmin(),
            counts.min(),
            folds,
        )
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            test_parts = [test for _, test in skf.split(cases, strata.to_numpy())]
        except ValueError:  # every stratum smaller than the number of folds
            log.warning("strata too small for %d folds; splitting without stratification", folds)
            test_parts = [test for _, test in skf.split(cases, np.zeros(len(cases)))]
    rng = np.random.default_rng(seed)
    rows = []
    for fold, test_idx in enumerate(test_parts):
        role = np.full(len(cases), "train", dtype=object)
        role[test_idx] = "test"
        train_idx = np.flatnonzero(role == "train")
        val_mask = carve_validation(
            cases[train_idx], val_strata.to_numpy()[train_idx], val_fraction, rng
        )
        role[train_idx[val_mask]] = "val"
        rows.append(pd.DataFrame({"case_id": cases, "fold": fold, "role": role}))
    return pd.concat(rows, ignore_index=True)


def check_inner_folds(splits: pd.DataFrame, strata: pd.Series, settings) -> None:
    """Every fold's training part (train + val) can be cross-validated in ``settings.inner_folds``
    inner folds, when ``settings`` select inside the training part (no check otherwise).

    Inner selection (``mil.selection`` ``ensemble_full`` / ``inner_cv`` / ...) splits each outer training part
    by case, stratified by ``strata`` (class, or event for survival); a class with fewer than ``k``
    training cases in some fold would stop that fold's training mid-run. Checked when the folds are
    written, before any training starts.
    """
    if settings.protocol != "holdout" or settings.selection == "holdout":
        return
    k = settings.inner_folds
    strata = strata.astype(str)
    for fold, part in splits[splits["role"] != "test"].groupby("fold"):
        counts = strata.reindex(part["case_id"]).value_counts()
        if counts.min() < k:
            raise PipelineError(
                "mil.inner_folds",
                f"fold {fold}'s training part has {int(counts.min())} case(s) of {counts.idxmin()!r}, "
                f"too few for {k} inner folds (mil.selection selects inside the training part)",
                "Use mil.selection: holdout, fewer inner folds (mil.inner_folds >= 2) or fewer folds.",
            )


def repeat_seed(seed: int, repeat: int | None) -> int:
    """The seed of repeat ``repeat``'s fold assignment (repeat 0 or None: ``seed`` itself)."""
    return int(seed) + int(repeat or 0)


def check_splits(df: pd.DataFrame, where: str = "splits") -> pd.DataFrame:
    """Validate a splits table: columns, roles, one row per (case, fold), each case test in exactly one fold."""
    missing = {"case_id", "fold", "role"} - set(df.columns)
    if missing:
        raise PipelineError(
            where,
            f"missing column(s) {', '.join(sorted(missing))}",
            "Write it with `wsi-mil splits` (columns case_id, fold, role).",
        )
    df = df.assign(case_id=df["case_id"].astype(str), fold=df["fold"].astype(int))
    bad = sorted(set(df["role"]) - set(ROLES))
    if bad:
        raise PipelineError(where, f"unknown role(s) {bad}", "Roles are train, val and test.")
    dup = df.duplicated(["case_id", "fold"])
    if dup.any():
        row = df[dup].iloc[0]
        raise PipelineError(
            where, f"case {row.case_id} appears twice in fold {row.fold}", "Regenerate the file."
        )
    n_test = df[df.role == "test"].groupby("case_id").size().reindex(df.case_id.unique()).fillna(0)
    if (n_test != 1).any():
        case = n_test[n_test != 1].index[0]
        raise PipelineError(
            where,
            f"case {case} is in the test part of {int(n_test[case])} folds (must be exactly 1)",
            "Regenerate the file with `wsi-mil splits`.",
        )
    return df


def read_splits(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a splits CSV."""
    p = Path(path)
    if not p.exists():
        raise PipelineError(p, "splits file not found", "Create it with `wsi-mil splits`.")
    return check_splits(pd.read_csv(p, dtype={"case_id": str}), where=str(p))


def fold_roles(splits: pd.DataFrame, fold: int, where: str = "splits") -> dict[str, str]:
    """``case_id -> role`` of one fold."""
    part = splits[splits["fold"] == int(fold)]
    if part.empty:
        folds = sorted(splits["fold"].unique())
        raise PipelineError(
            where, f"fold {fold} is not in the splits file", f"Folds present: {folds}."
        )
    return dict(zip(part["case_id"], part["role"], strict=True))
