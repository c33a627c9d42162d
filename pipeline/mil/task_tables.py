"""A task's tables as the MIL commands read them: ids as text, labels normalised, the survival rows
that count. The reading itself is :mod:`pipeline.tables` (the workflow's reader) and which rows count
is :mod:`pipeline.cohort`'s rule, so the commands and the workflow agree on every slide."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import tables
from pipeline.cohort import EVENT_WORDS, survival_record
from pipeline.errors import PipelineError
from pipeline.log import get_logger

log = get_logger("mil")


def read_table(path: str | os.PathLike, required: Sequence[str], what: str) -> pd.DataFrame:
    """Read a CSV with string ids, normalised as the workflow reads it (:mod:`pipeline.tables`:
    BOM, CRLF, spaces around headers and values, NFC); one clear error when absent or lacking a column."""
    df = tables.read_table(path, required, f"{what} table").frame()
    for col in tables.ID_COLUMNS:
        if col in df.columns:
            df[col] = df[col].astype(str)
    return df


def detect_task_type(path: str | os.PathLike) -> str:
    """``survival`` when the table has ``time`` and ``event`` columns, else ``classification``."""
    cols = set(tables.read_table(path).columns) if Path(path).exists() else set()
    return "survival" if {"time", "event"} <= cols else "classification"


def label_str(value: Any) -> str:
    """Labels as text; ``1.0`` (an int column with gaps, read as float) becomes ``1``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def sort_labels(values) -> list[str]:
    """Distinct labels, numeric order when all are numbers, else text order."""
    values = list(pd.unique(pd.Series(values)))
    try:
        return sorted(values, key=float)
    except (TypeError, ValueError):
        return sorted(values, key=str)


def majority(series: pd.Series) -> str:
    counts = series.astype(str).value_counts()
    return sorted(counts[counts == counts.max()].index)[0]


def clean_survival(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """The rows of a survival table that count (``cohort.survival_record``), one warning per row
    left out; a case listed twice is an error."""
    df = df.copy()
    # which rows count is pipeline.cohort's rule, the one the workflow chooses slides by
    records = [survival_record(t, e) for t, e in zip(df["time"], df["event"], strict=True)]
    bad = pd.Series([r is None for r in records], index=df.index, dtype=bool)
    df["time"] = pd.to_numeric(df["time"], errors="coerce")
    ev = df["event"].map(lambda v: EVENT_WORDS.get(str(v).strip().lower(), v))
    df["event"] = pd.to_numeric(ev, errors="coerce")
    for case in df.loc[bad, "case_id"]:
        log.warning(
            "case %s: time/event missing or invalid in %s (time >= 0, event 0/1); left out",
            case,
            source,
        )
    df = refuse_repeats(df[~bad], "case_id", "case", source)
    df["event"] = df["event"].astype(int)
    return df.drop_duplicates("case_id").reset_index(drop=True)[["case_id", "time", "event"]]


def as_table(df: pd.DataFrame, columns: Sequence[str], source: str) -> tables.Table:
    """``columns`` of a task's cleaned frame as the rows :mod:`pipeline.cohort` reads (text cells,
    missing ones empty), so the task chooses its slides by the cohort's rule, not a copy of it."""
    rows = tuple(
        {c: "" if pd.isna(v) else str(v) for c, v in zip(columns, values, strict=True)}
        for values in df[list(columns)].itertuples(index=False)
    )
    return tables.Table(source, tuple(columns), rows)


def refuse_repeats(df: pd.DataFrame, column: str, what: str, source: str) -> pd.DataFrame:
    """``df`` unchanged, or one line naming the first ``what`` (slide, case) listed twice."""
    dup = df[column][df[column].duplicated()]
    if len(dup):
        raise PipelineError(
            source, f"{what} {dup.iloc[0]} is listed twice", f"Give each {what} one row."
        )
    return df
