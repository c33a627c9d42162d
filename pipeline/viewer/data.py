"""What one viewer page shows, gathered from the stages' outputs (nothing about a slide is computed anew).

Per slide of a task: the tile store's patches, the tissue polygons of its GeoJSON export, and every
heatmap folder's score store of that slide — out of fold for the training cohort (``heatmaps/``), one
model's for the external cohort (``heatmaps_external/``) — with label, fold, role and prediction as the
score store recorded them. Scores are shipped raw (hover) and normalised to [0, 1] per slide with the
heatmaps' own rule (``heatmaps.normalise``), so a layer looks like the static heatmap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.layout import HEATMAP_INDEX, heatmap_files


@dataclass
class Method:
    """One heatmap folder: ``{encoder}/{method}``, the cohort it scored and the task it predicts."""

    folder: Path
    cohort: str  # cv | external

    @property
    def label(self) -> str:
        return f"{self.folder.parent.name}/{self.folder.name}"

    def index(self) -> dict[str, Any]:
        path = self.folder / HEATMAP_INDEX
        if not path.is_file():
            raise PipelineError(
                path, "heatmap folder has no index.json", "Re-run its heatmaps job."
            )
        return json.loads(path.read_text())


@dataclass
class SlideEntry:
    """One slide of the cohort index: where it sits and what each method predicted."""

    slide_id: str
    cohort: str
    case_id: Any = None
    label: Any = None
    fold: Any = None
    predictions: dict[str, Any] = field(default_factory=dict)  # method label -> prediction
    errors: dict[str, float | None] = field(default_factory=dict)


def task_of(store_attrs: dict[str, Any]) -> dict[str, Any]:
    """The task a score store's model predicts (its ``model.json``: type, classes)."""
    model_dir = (store_attrs.get("provenance") or {}).get("model_dir")
    if not model_dir or not (Path(model_dir) / "model.json").is_file():
        return {}
    return dict(json.loads((Path(model_dir) / "model.json").read_text()).get("task") or {})


def prediction_error(task: dict[str, Any], label: Any, prediction: Any) -> float | None:
    """|truth − P(positive)| of a binary task, 1 − P(true class) with more classes; None for
    survival or an unknown label (a risk has no per-slide error)."""
    classes = [str(c) for c in task.get("classes") or []]
    if task.get("type") != "classification" or label is None or str(label) not in classes:
        return None
    if isinstance(prediction, list):
        return float(1.0 - prediction[classes.index(str(label))])
    truth = 1.0 if str(label) == classes[-1] else 0.0
    return float(abs(truth - float(prediction)))


def _sig(values: np.ndarray, digits: int = 5) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, np.float64).tolist()]


def layers_of(label: str, store, normalise_mode: str) -> list[dict[str, Any]]:
    """One layer per score of a score store: raw values and their [0, 1] colour positions."""
    from pipeline.heatmaps.render import normalise

    main, _ = store.score()
    out = []
    for name in sorted(store.scores, key=lambda n: (n != main, n)):
        values = store.scores[name]
        position, bar = normalise(values, normalise_mode)
        out.append(
            {
                "id": f"{label}: {name}",
                "method": label,
                "score": name,
                "main": name == main,
                "raw": _sig(values),
                "value": [round(float(v), 4) for v in position],
                "bar": bar,
            }
        )
    return out


def slide_stores(methods: list[Method], slide: str) -> list[tuple[Method, Any]]:
    """Every method's score store of the slide (a method that failed it is left out)."""
    from pipeline.heatmaps.store import read_score_store

    out = []
    for method in methods:
        path = heatmap_files(method.folder, slide)["store"]
        if path.exists():
            out.append((method, read_score_store(path)))
    return out
