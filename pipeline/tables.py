"""Read the user's CSV tables (labels, survival, slide sheet) one way everywhere.

The workflow (while Snakemake parses, so no torch and no pandas here) and the commands (``wsi-mil
train``/``cv``/``splits``, through :meth:`Table.frame`) read the same table, so they must see the same
rows. Spreadsheet exports differ in ways a user cannot see, and each is normalised here:

* a UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped;
* CRLF and CR line ends read as LF;
* spaces around header names and around values are dropped;
* text is put in Unicode NFC, so an id typed as ``ä`` (one code point) and one stored as ``a`` +
  combining diaeresis (macOS file names) are the same id.

A problem is one :class:`TableError` line naming the file and the column.
"""

from __future__ import annotations

import csv
import io
import os
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import TableError

ID_COLUMNS = ("slide_id", "case_id")


def normalise(value: str | None) -> str:
    """One cell or header as every reader sees it: NFC, without surrounding whitespace."""
    return unicodedata.normalize("NFC", value or "").strip()


def normalise_id(value: str) -> str:
    """A slide or case id (also a file stem) in the form tables use."""
    return normalise(value)


@dataclass(frozen=True)
class Table:
    """The normalised rows of one CSV: ``columns`` in file order, each row a dict of strings."""

    path: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]

    def __len__(self) -> int:
        return len(self.rows)

    def require(self, columns: Iterable[str], what: str = "table") -> Table:
        """This table, or a :class:`TableError` naming the file and the first missing column."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            have = ", ".join(self.columns) or "no header"
            raise TableError(
                self.path,
                f"{what} has no column {', '.join(missing)} (it has: {have})",
                f"Add a header row with {', '.join(columns)}.",
            )
        return self

    def column(self, name: str) -> list[str]:
        """The values of one column, in row order."""
        self.require([name])
        return [row[name] for row in self.rows]

    def frame(self, id_columns: Sequence[str] = ID_COLUMNS) -> Any:
        """A pandas DataFrame of the normalised table, types inferred as for a clean CSV.

        Id columns stay text (``007`` is not ``7``); empty cells are missing values (NaN).
        """
        import pandas as pd

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows([row[c] for c in self.columns] for row in self.rows)
        buffer.seek(0)
        dtypes = {c: str for c in id_columns if c in self.columns}
        return pd.read_csv(buffer, dtype=dtypes)


def read_table(path: str | os.PathLike, required: Sequence[str] = (), what: str = "table") -> Table:
    """Read and normalise a CSV; missing file, undecodable text or missing columns are one line."""
    p = Path(path)
    if not p.is_file():
        raise TableError(p, f"{what} not found", "Create it or fix the path in the config.")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TableError(
            p,
            f"{what} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})",
            "Save it as 'CSV UTF-8' (Excel) or UTF-8 CSV.",
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    columns = tuple(normalise(c) for c in header)
    dupes = sorted({c for c in columns if columns.count(c) > 1 and c})
    if dupes:
        raise TableError(p, f"{what} has column {dupes[0]} twice", "Keep one of them.")
    rows = []
    for record in reader:
        if not any(cell.strip() for cell in record):
            continue  # blank lines (often at the end of an export)
        cells = [normalise(c) for c in record] + [""] * (len(columns) - len(record))
        rows.append(dict(zip(columns, cells, strict=False)))
    return Table(str(p), columns, tuple(rows)).require(required, what)
