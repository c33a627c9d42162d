"""Outputs that were damaged on disk after they were made, found when the workflow parses.

Snakemake decides from file times alone, and only asks for the files some job needs: a fold folder
whose ``model.json`` or ``model.pt`` was deleted still has its ``metrics.json``, nothing downstream
needs the deleted file, so Snakemake reports nothing to be done, and the next command that loads the
model (``predict``, heatmaps, an MHIM teacher) fails. A fold is complete only with every file of
:data:`pipeline.layout.FOLD_FILES`; here an incomplete one loses its ``metrics.json`` (written last,
so it is what marks a fold done), which makes Snakemake retrain it and redo what depends on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import layout


def reopen_incomplete_folds(results_dir: str | os.PathLike, remove: bool = True) -> list[str]:
    """One line per fold folder under ``results_dir/mil`` that has ``metrics.json`` but lacks another
    fold file; with ``remove``, its ``metrics.json`` is removed so the fold is trained again."""
    lines = []
    for metrics in sorted(Path(results_dir, "mil").glob(f"**/{layout.METRICS}")):
        fold = metrics.parent
        missing = [name for name in layout.FOLD_FILES.values() if not (fold / name).is_file()]
        if not missing:
            continue
        if remove:
            metrics.unlink(missing_ok=True)
        action = "it is trained again" if remove else "a run will train it again"
        lines.append(f"{fold}: {', '.join(missing)} missing (deleted?): {action}")
    return lines
