"""Where every output of a run lives: the one place the results layout is spelled out.

The Snakemake rules, the commands and the report all ask this module for paths, so a file is named
once. It imports nothing heavy (no torch, no zarr) because the workflow imports it while parsing,
also once per cluster job. Paths are plain ``str`` joined with ``/`` so that Snakemake wildcard
patterns pass through unchanged: ``Layout("results").tiles("{slide}")`` is the rule's output pattern
and ``Layout("results").tiles("S1")`` the file of slide S1. See docs/architecture.md, "Data
contracts", for what each file holds.

Layout of ``results_dir``::

    config.effective.yaml                      the validated config the commands run with
    run.json                                   what the current run is made of (for the report)
    tiles/{slide}.zarr    qc/{slide}.png       tiling
    features/{encoder}/{slide}.zarr            feature extraction
    splits/{task}.csv                          folds per task (mil.repeats = 1)
    splits/{task}/repeat{r}.csv                folds of repeat r (mil.repeats > 1)
    mil/{task}/{encoder}/{method}/fold{k}/     one trained model (FOLD_FILES); method = a method or
                                               a variant; with repeats > 1: .../repeat{r}/fold{k}/
    mil/{task}/{encoder}/{method}/summary.json mean +- std over folds, intervals
    external/{task}/{encoder}/{method}/[repeat{r}/]fold{k}.csv|.json
                                               a fold model's predictions/metrics on the task's
                                               external cohort (`wsi-mil predict`)
    external/{task}/{encoder}/{method}/summary.json   the same statistics on the external cohort
    mil/{task}/{encoder}/{method}/all_cases/   one model on every case (mil.external_all_cases)
    external_all_cases/{task}/{encoder}/{method}/all_cases.csv|.json|summary.json
                                               its predictions/metrics/statistics on the cohort
    heatmaps/{task}/{encoder}/{method}/        out-of-fold score stores and pictures (HEATMAP_INDEX)
    geojson/{task}/{slide}.geojson             QuPath objects: tissue, patches with scores, top-k
    report/slides/{slide}/                     a slide's Deep Zoom pyramid (viewer tiles)
    report/viewer/{task}/index.html            the task's cohort index and a page per slide
    summary.csv  report/index.html  report/slides.csv
    logs/{stage}/...log  benchmarks/{stage}/...tsv
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- the files of one fold folder (written by `wsi-mil train`, read by predict/evaluate/report) -----
MODEL_WEIGHTS = "model.pt"  # state dict (torch.save of tensors only; loaded with weights_only=True)
MODEL_META = "model.json"  # method, task, in_dim, n_outputs, cfg, fold, ... : how to rebuild it
HISTORY = "history.csv"  # one row per epoch
PREDICTIONS = "predictions.csv"  # one row per test case
METRICS = "metrics.json"  # written last: its presence marks the fold complete

# key (as the train rule names its outputs) -> file name, in the order they are written
FOLD_FILES: dict[str, str] = {
    "model": MODEL_WEIGHTS,
    "model_json": MODEL_META,
    "history": HISTORY,
    "predictions": PREDICTIONS,
    "metrics": METRICS,
}

SUMMARY_JSON = "summary.json"  # one per task x encoder x method (and per method in `wsi-mil cv`)
SUMMARY_CSV = "summary.csv"  # one row per task x encoder x method x cohort
SPLITS_CSV = "splits.csv"  # the folds `wsi-mil cv` writes into its output folder
EFFECTIVE_CONFIG = "config.effective.yaml"
RUN_MANIFEST = "run.json"  # the slides, encoders and benchmark files of the current run (report)
HEATMAP_INDEX = "index.json"  # a heatmap folder's manifest (slides, folds, files); written last
LOCALISATION_CSV = (
    "localisation.csv"  # per-slide localisation AUCs beside it (when masks are known)
)

_FOLD_DIR = re.compile(r"^fold(\d+)$")
# summary.json of the cross-validation (mil/) and of the external cohort (external/)
COHORT_DIRS = {"cv": "mil", "external": "external", "external_all_cases": "external_all_cases"}
ALL_CASES = "all_cases"  # the all-cases model's folder and its prediction files' stem
_REPEAT_DIR = re.compile(r"^repeat(\d+)$")


def repeat_ids(repeats: int) -> list[int | None]:
    """The repeat part of every path: ``[None]`` for one repeat (today's paths), else ``0..R-1``."""
    return [None] if int(repeats) == 1 else list(range(int(repeats)))


def repeat_name(repeat: int | str) -> str:
    """``repeat{r}``: the folder of repeat r (wildcards such as ``{repeat}`` pass through)."""
    return f"repeat{repeat}"


def fold_repeat(fold_dir: str | os.PathLike) -> int:
    """r for a fold folder inside ``repeat{r}/``, else 0 (one repeat: no repeat folder)."""
    match = _REPEAT_DIR.match(Path(fold_dir).parent.name)
    return int(match.group(1)) if match else 0


def _repeat_parts(repeat: int | str | None) -> list[str]:
    return [] if repeat is None else [repeat_name(repeat)]


def fold_name(fold: int | str) -> str:
    """``fold{k}``: the folder of fold k (wildcards such as ``{fold}`` pass through)."""
    return f"fold{fold}"


def fold_number(folder: str | os.PathLike) -> int | None:
    """k for a folder named ``fold{k}``, else None."""
    match = _FOLD_DIR.match(Path(folder).name)
    return int(match.group(1)) if match else None


def fold_file(fold_dir: str | os.PathLike, key: str) -> Path:
    """One file of a fold folder by its key in :data:`FOLD_FILES` (``model``, ``metrics``, ...)."""
    return Path(fold_dir) / FOLD_FILES[key]


def fold_complete(fold_dir: str | os.PathLike) -> bool:
    """A fold folder is complete once ``metrics.json`` exists (it is written last, atomically) and
    none of the files written before it has gone since (a deleted ``model.json`` or ``model.pt``
    makes the fold incomplete, so a resumed ``wsi-mil cv`` retrains it instead of reusing it)."""
    return all(fold_file(fold_dir, key).is_file() for key in FOLD_FILES)


def heatmap_files(folder: str | os.PathLike, slide: str) -> dict[str, Path]:
    """The files of one slide in a heatmap folder: ``store`` ({slide}.zarr), ``png`` ({slide}.png),
    ``gallery`` ({slide}_gallery.png) and ``gallery_csv`` ({slide}_gallery.csv)."""
    folder = Path(folder)
    return {
        "store": folder / f"{slide}.zarr",
        "png": folder / f"{slide}.png",
        "gallery": folder / f"{slide}_gallery.png",
        "gallery_csv": folder / f"{slide}_gallery.csv",
    }


def summary_parts(path: str | os.PathLike) -> tuple[str, str, str] | None:
    """(task, encoder, method) of ``.../{mil,external}/{task}/{encoder}/{method}/summary.json``."""
    parts = Path(path).resolve().parts
    if len(parts) < 5 or parts[-5] not in COHORT_DIRS.values() or parts[-1] != SUMMARY_JSON:
        return None
    return parts[-4], parts[-3], parts[-2]


def fold_path(
    method_dir: str | os.PathLike, fold: int | str, repeat: int | str | None = None
) -> Path:
    """``{method_dir}/[repeat{r}/]fold{k}``: one fold folder of a method."""
    return Path(method_dir, *_repeat_parts(repeat), fold_name(fold))


def summary_fold_dirs(summary_json: str | os.PathLike, summary: dict[str, Any]) -> list[str]:
    """The fold folders of a ``summary.json``, found next to it (``[repeat{r}/]fold{k}``, in the
    order of its ``folds``), so a results folder that was moved or a summary made from relative
    paths still finds them."""
    base = Path(os.path.abspath(summary_json)).parent
    folds = summary.get("folds", [])
    repeats = summary.get("repeats") or [0] * len(folds)
    nested = max(repeats, default=0) > 0
    return [
        str(fold_path(base, k, r if nested else None)) for r, k in zip(repeats, folds, strict=True)
    ]


def external_fold_file(method_dir: str, fold: int | str, repeat: int | str | None, ext: str) -> str:
    """``{method_dir}/[repeat{r}/]fold{k}.{ext}``: one fold model's output on an external cohort."""
    return "/".join([method_dir, *_repeat_parts(repeat), f"{fold_name(fold)}.{ext}"])


@dataclass(frozen=True)
class Layout:
    """The paths of one results folder; every method returns ``str`` (wildcards pass through)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.path.normpath(str(self.root)))

    def _join(self, *parts: object) -> str:
        return "/".join([self.root, *map(str, parts)])

    # --- run-wide files -----------------------------------------------------------------------------
    @property
    def effective_config(self) -> str:
        return self._join(EFFECTIVE_CONFIG)

    @property
    def run_manifest(self) -> str:
        return self._join(RUN_MANIFEST)

    @property
    def summary_csv(self) -> str:
        return self._join(SUMMARY_CSV)

    @property
    def report_html(self) -> str:
        return self._join("report", "index.html")

    @property
    def report_slides_csv(self) -> str:
        return self._join("report", "slides.csv")

    # --- per slide ----------------------------------------------------------------------------------
    def tiles(self, slide: str) -> str:
        return self._join("tiles", f"{slide}.zarr")

    def qc(self, slide: str) -> str:
        return self._join("qc", f"{slide}.png")

    def features_dir(self, encoder: str) -> str:
        """The folder of one encoder's feature stores (what `wsi-mil train --features` takes)."""
        return self._join("features", encoder)

    def features(self, encoder: str, slide: str) -> str:
        return self._join("features", encoder, f"{slide}.zarr")

    def staging_dir(self, encoder: str) -> str:
        """Where group jobs stage stores before ``extract`` moves them (not Snakemake outputs)."""
        return self._join("staging", "features", encoder)

    def staged_features(self, encoder: str, slide: str) -> str:
        return self._join("staging", "features", encoder, f"{slide}.zarr")

    def group_summary(self, encoder: str, group: str) -> str:
        """The summary a group job writes last (its declared output)."""
        return self._join("staging", "features", encoder, f"group-{group}.json")

    # --- MIL ----------------------------------------------------------------------------------------
    def splits(self, task: str, repeat: int | str | None = None) -> str:
        """The folds of a task (of one repeat when ``repeat`` is given: ``mil.repeats`` > 1)."""
        if repeat is None:
            return self._join("splits", f"{task}.csv")
        return self._join("splits", task, f"{repeat_name(repeat)}.csv")

    def method_dir(self, task: str, encoder: str, method: str) -> str:
        return self._join("mil", task, encoder, method)

    def fold_dir(
        self, task: str, encoder: str, method: str, fold: int | str, repeat: int | str | None = None
    ) -> str:
        parts = [*_repeat_parts(repeat), fold_name(fold)]
        return self._join("mil", task, encoder, method, *parts)

    def fold_file(
        self,
        task: str,
        encoder: str,
        method: str,
        fold: int | str,
        key: str,
        repeat: int | str | None = None,
    ) -> str:
        return f"{self.fold_dir(task, encoder, method, fold, repeat)}/{FOLD_FILES[key]}"

    def fold_files(
        self, task: str, encoder: str, method: str, fold: int | str, repeat: int | str | None = None
    ) -> dict[str, str]:
        """Every file of one fold folder by key (the train rule's named outputs)."""
        return {k: self.fold_file(task, encoder, method, fold, k, repeat) for k in FOLD_FILES}

    def summary_json(self, task: str, encoder: str, method: str) -> str:
        return f"{self.method_dir(task, encoder, method)}/{SUMMARY_JSON}"

    # --- external validation (a task's `external` cohort, predicted by every fold model) -----------
    def external_dir(self, task: str, encoder: str, method: str) -> str:
        return self._join("external", task, encoder, method)

    def external_predictions(
        self, task: str, encoder: str, method: str, fold: int | str, repeat: int | str | None = None
    ) -> str:
        return external_fold_file(self.external_dir(task, encoder, method), fold, repeat, "csv")

    def external_metrics(
        self, task: str, encoder: str, method: str, fold: int | str, repeat: int | str | None = None
    ) -> str:
        return external_fold_file(self.external_dir(task, encoder, method), fold, repeat, "json")

    def external_summary(self, task: str, encoder: str, method: str) -> str:
        return f"{self.external_dir(task, encoder, method)}/{SUMMARY_JSON}"

    def external_heatmap_dir(self, task: str, encoder: str, method: str) -> str:
        """The external cohort's heatmaps of a method (the external_heatmaps rule's folder)."""
        return self._join("heatmaps_external", task, encoder, method)

    # --- the all-cases model (mil.external_all_cases) and its predictions on the external cohort --
    def all_cases_dir(self, task: str, encoder: str, method: str) -> str:
        return f"{self.method_dir(task, encoder, method)}/{ALL_CASES}"

    def all_cases_file(self, task: str, encoder: str, method: str, key: str) -> str:
        return f"{self.all_cases_dir(task, encoder, method)}/{FOLD_FILES[key]}"

    def external_all_cases_dir(self, task: str, encoder: str, method: str) -> str:
        return self._join(COHORT_DIRS["external_all_cases"], task, encoder, method)

    def external_all_cases(self, task: str, encoder: str, method: str, ext: str) -> str:
        """``all_cases.csv`` (predictions) or ``all_cases.json`` (metrics) of the all-cases model."""
        return f"{self.external_all_cases_dir(task, encoder, method)}/{ALL_CASES}.{ext}"

    def external_all_cases_summary(self, task: str, encoder: str, method: str) -> str:
        return f"{self.external_all_cases_dir(task, encoder, method)}/{SUMMARY_JSON}"

    # --- heatmaps -----------------------------------------------------------------------------------
    def heatmap_dir(self, task: str, encoder: str, method: str) -> str:
        """One folder per task x encoder x method (the heatmaps rule's directory output)."""
        return self._join("heatmaps", task, encoder, method)

    def heatmap_index(self, task: str, encoder: str, method: str) -> str:
        return f"{self.heatmap_dir(task, encoder, method)}/{HEATMAP_INDEX}"

    # --- slide viewer and QuPath export -------------------------------------------------------------
    @property
    def tiles_dir(self) -> str:
        return self._join("tiles")

    def geojson_dir(self, task: str) -> str:
        """A task's GeoJSON files, one ``{slide}.geojson`` per slide (the geojson rule's folder)."""
        return self._join("geojson", task)

    @property
    def viewer_pyramids_dir(self) -> str:
        return self._join("report", "slides")

    def viewer_pyramid(self, slide: str) -> str:
        """One slide's Deep Zoom tiles and ``pyramid.js`` (shared by every task's pages)."""
        return self._join("report", "slides", slide)

    def viewer_dir(self, task: str) -> str:
        """A task's viewer pages: ``index.html`` (the cohort) and ``{slide}.html`` per slide."""
        return self._join("report", "viewer", task)

    # --- Snakemake's own files ----------------------------------------------------------------------
    def log(self, stage: str, *parts: str) -> str:
        """``logs/{stage}/{parts...}.log``, or ``logs/{stage}.log`` for a run-wide stage."""
        if not parts:
            return self._join("logs", f"{stage}.log")
        return self._join("logs", stage, *parts[:-1], f"{parts[-1]}.log")

    def benchmark(self, stage: str, *parts: str) -> str:
        """``benchmarks/{stage}/{parts...}.tsv`` (the report's run-time table reads these)."""
        return self._join("benchmarks", stage, *parts[:-1], f"{parts[-1]}.tsv")

    @property
    def benchmarks_dir(self) -> str:
        return self._join("benchmarks")


@dataclass(frozen=True)
class CvLayout:
    """The output folder of ``wsi-mil cv`` (one task and encoder, so no ``{task}/{encoder}`` parts):
    ``{name}/[repeat{r}/]fold{k}/``, ``{name}/summary.json``, ``{name}/all_cases/``, the external
    cohorts under ``external/{name}/`` and ``external_all_cases/{name}/``, ``summary.csv``."""

    root: Path

    def splits(self, repeat: int | None) -> Path:
        return self.root / (SPLITS_CSV if repeat is None else f"splits.{repeat_name(repeat)}.csv")

    def method_dir(self, name: str) -> Path:
        return self.root / name

    def fold_dir(self, name: str, fold: int | str, repeat: int | str | None) -> Path:
        return fold_path(self.method_dir(name), fold, repeat)

    def all_cases_dir(self, name: str) -> Path:
        return self.method_dir(name) / ALL_CASES

    def cohort_dir(self, cohort: str, name: str) -> Path:
        """Where a method's summary of ``cohort`` (``cv``, ``external``, ``external_all_cases``) is."""
        return self.method_dir(name) if cohort == "cv" else self.root / COHORT_DIRS[cohort] / name

    def summary_json(self, name: str, cohort: str = "cv") -> Path:
        return self.cohort_dir(cohort, name) / SUMMARY_JSON

    def external_files(
        self, cohort: str, name: str, fold: int | str, repeat: int | str | None
    ) -> tuple[str, str]:
        """(predictions ``.csv``, metrics ``.json``) of one fold model (or, for
        ``external_all_cases``, the all-cases model) on an external cohort."""
        method_dir = str(self.cohort_dir(cohort, name))
        if cohort == "external_all_cases":
            return (f"{method_dir}/{ALL_CASES}.csv", f"{method_dir}/{ALL_CASES}.json")
        return tuple(external_fold_file(method_dir, fold, repeat, e) for e in ("csv", "json"))

    @property
    def summary_csv(self) -> Path:
        return self.root / SUMMARY_CSV
