"""Which slides exist and which of them a task uses: one set of rules for the workflow and the commands.

The Snakemake workflow decides at parse time which slides to tile and embed for a task, and
``wsi-mil train``/``cv`` decide which feature stores become bags; if the two rules differed, the
workflow would embed slides no model trains on, or a command would look for a store the workflow
never made. Both ask this module. It imports neither torch nor pandas (the workflow imports it while
parsing) and reads tables with :mod:`pipeline.tables`.

* :func:`discover_slides` — slide id (file stem, NFC) -> path, recursively; DICOM folders are one
  slide; duplicate ids and ids Snakemake cannot put in a path are :class:`ConfigError`.
* :func:`survival_record` — whether a survival row counts (time >= 0, event 0/1 or true/false).
* :func:`task_slides` — slide id -> case id of every slide a task trains on, in table order, with one
  note per row left out. Classification: the table's slides with a label (case id = slide id where
  empty). Survival: the slides of ``slides_table`` (else the table's own ``slide_id`` column, else
  the case ids themselves) whose case has a valid survival record. :func:`choose_slides` applies the
  same rule to tables already read; the MIL tasks' ``wanted_slides`` call it with their own rows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import schema_values
from pipeline.errors import ConfigError, TableError
from pipeline.tables import Table, normalise_id, read_table

TASK_TYPES = schema_values("tasks.type")
EVENT_WORDS = {"true": 1, "false": 0}


def discover_slides(slides_dir: str | os.PathLike, extensions: list[str]) -> dict[str, str]:
    """Map slide id (file stem) -> path for every slide below ``slides_dir``, sorted by id.

    Searched recursively (GDC downloads put each slide in its own folder); hidden entries are
    skipped; symlinked folders are followed, each real folder once. A folder of DICOM files is one
    slide named after the folder. Ids are in Unicode NFC, as the tables' ids are. Two files with the
    same stem would overwrite each other's outputs, so they are an error naming both.
    """
    if not os.path.isdir(slides_dir):
        raise ConfigError(
            f"slides_dir '{slides_dir}'",
            "is not a folder",
            "Put the slides there or set slides_dir in the config.",
        )
    wanted = {e.lower() for e in extensions}
    found: dict[str, list[str]] = {}
    visited = set()  # real folders walked, so a symlink loop or a second link is read once
    for root, dirs, files in os.walk(slides_dir, followlinks=True):
        if os.path.realpath(root) in visited:
            dirs[:] = []
            continue
        visited.add(os.path.realpath(root))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files = sorted(f for f in files if not f.startswith("."))
        if ".dcm" in wanted and any(f.lower().endswith(".dcm") for f in files):
            first = next(f for f in files if f.lower().endswith(".dcm"))
            found.setdefault(normalise_id(Path(root).name), []).append(os.path.join(root, first))
        for name in files:
            suffix = Path(name).suffix.lower()
            if suffix in wanted and suffix != ".dcm":
                found.setdefault(normalise_id(Path(name).stem), []).append(os.path.join(root, name))
    # Snakemake reads braces in a path as a wildcard, so such an id cannot name its outputs
    unusable = [p for sid, paths in found.items() if "{" in sid or "}" in sid for p in paths]
    if unusable:
        raise ConfigError(
            f"slides_dir '{slides_dir}'",
            "slide file name(s) with '{' or '}', which Snakemake cannot use in output paths: "
            + ", ".join(unusable),
            "Rename them without braces (e.g. b{1}.svs -> b_1.svs).",
        )
    clashes = [f"'{sid}': {' and '.join(paths)}" for sid, paths in found.items() if len(paths) > 1]
    if clashes:
        raise ConfigError(
            f"slides_dir '{slides_dir}'",
            "two slides have the same id (file stem), so their outputs would collide: "
            + "; ".join(clashes),
            "Rename or remove one of each pair.",
        )
    if not found:
        raise ConfigError(
            f"slides_dir '{slides_dir}'",
            f"no slides found (looked for {', '.join(sorted(wanted))})",
            "Put the slides there or set slides_dir / slide_extensions in the config.",
        )
    return {sid: paths[0] for sid, paths in sorted(found.items())}


def survival_record(time: object, event: object) -> tuple[float, int] | None:
    """``(time, event)`` of a survival row that counts, else None: time a number >= 0, event 0 or 1
    (``true``/``false`` in any case too). Cells may be text (a CSV) or numbers (a table in memory)."""
    event = EVENT_WORDS.get(str(event).strip().lower(), event)
    try:
        t, e = float(time), float(event)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if math.isnan(t) or t < 0 or e not in (0.0, 1.0):
        return None
    return t, int(e)


@dataclass(frozen=True)
class TaskSlides:
    """The slides a task trains on (slide id -> case id, in table order) and a line per row left out."""

    cases: dict[str, str]
    notes: tuple[str, ...] = ()

    @property
    def slide_ids(self) -> list[str]:
        return list(self.cases)


def task_slides(
    task_type: str, table: str | os.PathLike, slides_table: str | os.PathLike | None = None
) -> TaskSlides:
    """Slide id -> case id of every slide a task trains on (module docstring rules)."""
    if task_type == "classification":
        return choose_slides(task_type, read_table(table, ["slide_id", "label"], "labels table"))
    if task_type == "survival":
        records = read_table(table, ["case_id", "time", "event"], "survival table")
        slides = None
        if slides_table is not None:
            slides = read_table(slides_table, ["slide_id", "case_id"], "slides table")
        return choose_slides(task_type, records, slides)
    raise ConfigError(
        "task", f"unknown task type '{task_type}'", f"Use one of {', '.join(TASK_TYPES)}."
    )


def choose_slides(task_type: str, table: Table, slides: Table | None = None) -> TaskSlides:
    """:func:`task_slides` of tables already read (the MIL task asks this with its own rows)."""
    if task_type == "classification":
        return _classification(table)
    if task_type == "survival":
        return _survival(table, slides)
    raise ConfigError(
        "task", f"unknown task type '{task_type}'", f"Use one of {', '.join(TASK_TYPES)}."
    )


def _classification(table: Table) -> TaskSlides:
    cases, notes = {}, []
    for row in table.rows:
        slide = row["slide_id"]
        if not row["label"]:
            notes.append(f"slide {slide}: empty label in {table.path}; left out")
            continue
        if slide in cases:
            raise TableError(
                table.path, f"slide {slide} is listed twice", "Give each slide one row."
            )
        cases[slide] = row.get("case_id") or slide
    return TaskSlides(cases, tuple(notes))


def _survival(records: Table, slides: Table | None) -> TaskSlides:
    rows = records.rows
    if slides is None and "slide_id" in records.columns:  # one row per slide: a case's first counts
        pairs = [(r["slide_id"], r["case_id"]) for r in rows]
        firsts: dict[str, dict[str, str]] = {}
        for r in rows:
            firsts.setdefault(r["case_id"], r)
        rows = tuple(firsts.values())
    known, notes = set(), []
    for row in rows:
        if survival_record(row["time"], row["event"]) is None:
            notes.append(
                f"case {row['case_id']}: time/event missing or invalid in {records.path} "
                "(time >= 0, event 0/1); left out"
            )
        elif row["case_id"] in known:
            raise TableError(
                records.path, f"case {row['case_id']} is listed twice", "Give each case one row."
            )
        else:
            known.add(row["case_id"])
    if slides is not None:
        pairs = [(r["slide_id"], r["case_id"]) for r in slides.rows]
    elif "slide_id" not in records.columns:  # slide ids are the case ids
        pairs = [(r["case_id"], r["case_id"]) for r in rows if r["case_id"] in known]
    cases = {}
    for slide, case in pairs:
        if slide in cases or not slide:
            continue
        if case in known:
            cases[slide] = case
        else:
            notes.append(f"slide {slide}: case {case} has no survival record; left out")
    return TaskSlides(cases, tuple(notes))
