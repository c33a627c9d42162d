# Helpers shared by the rules: slide discovery, label checks, output paths, the `wsi-mil` command.
#
# Everything here runs when Snakemake parses the workflow (also inside each cluster job), so it only
# reads small files (tables, the slide folder listing) and never imports torch.

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import yaml
from snakemake.logging import logger
from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from pipeline import cohort, methods
from pipeline.errors import PipelineError
from pipeline.layout import FOLD_FILES, Layout, fold_name, repeat_ids, repeat_name
from pipeline.methods import METHODS as METHOD_TABLE
from pipeline.methods import default_reference
from pipeline.store import write_text
from pipeline.tables import read_table as read_csv_table

WORKFLOW_ROOT = Path(workflow.basedir)
# every path the rules write (pipeline/layout.py; docs/architecture.md, "Data contracts")
OUT = Layout(config["results_dir"])
RESULTS = OUT.root
EFFECTIVE_CONFIG = OUT.effective_config


# --- slides -------------------------------------------------------------------------------------


def discover_slides(slides_dir, extensions):
    """Slide id -> path below ``slides_dir`` (pipeline.cohort.discover_slides: the rules there)."""
    try:
        return cohort.discover_slides(slides_dir, extensions)
    except PipelineError as err:
        raise WorkflowError(err.line())


def read_table(path, what, columns):
    """A user's table, read and normalised as the commands read it (pipeline/tables.py)."""
    try:
        return read_csv_table(path, columns, what)
    except PipelineError as err:
        raise WorkflowError(err.line())


def read_slide_sheet(path):
    """Per-slide MPP overrides from the optional slide sheet (slide_id,mpp)."""
    if not path:
        return {}
    sheet = {}
    for row in read_table(path, "slide_sheet", ["slide_id", "mpp"]).rows:
        try:
            sheet[row["slide_id"]] = float(row["mpp"])
        except ValueError:
            raise WorkflowError(
                f"slide_sheet '{path}': slide '{row['slide_id']}' has mpp '{row['mpp']}', "
                "expected a number of micrometres per pixel."
            )
    return sheet


SLIDES = discover_slides(config["slides_dir"], config["slide_extensions"])
SLIDE_IDS = list(SLIDES)
SLIDE_MPP = read_slide_sheet(config.get("slide_sheet"))
for _sid in sorted(set(SLIDE_MPP) - set(SLIDES)):
    logger.warning(
        f"slide_sheet: slide '{_sid}' has an MPP override but no slide file; ignored."
    )


# --- tasks --------------------------------------------------------------------------------------

TASKS = {task["name"]: task for task in config["tasks"]}


def task_slides_table(task):
    """The table that maps this task's slides to cases: its own table for classification,
    ``slides_table`` (slide_id,case_id) for survival, whose table has one row per case.
    """
    if task["type"] == "classification":
        return task["table"]
    if task.get("slides_table"):
        return task["slides_table"]
    raise WorkflowError(
        f"task '{task['name']}' (survival): set slides_table to a CSV with slide_id,case_id "
        "(e.g. the classification labels.csv) so slides can be grouped into cases."
    )


def task_slide_ids(task):
    """Slides the task trains on (pipeline.cohort.task_slides, the rule `wsi-mil train` follows)
    that exist on disk; one warning per slide left out."""
    try:
        chosen = cohort.task_slides(
            task["type"], task["table"], task.get("slides_table")
        )
    except PipelineError as err:
        raise WorkflowError(f"task '{task['name']}': {err.line()}")
    for note in chosen.notes:
        logger.warning(f"task '{task['name']}': {note}")
    path = task_slides_table(task)
    for sid in chosen.slide_ids:
        if sid not in SLIDES:
            logger.warning(
                f"task '{task['name']}': slide '{sid}' is listed in {path} but not found in "
                f"{config['slides_dir']}; it is left out."
            )
    present = [sid for sid in chosen.slide_ids if sid in SLIDES]
    if not present:
        raise WorkflowError(
            f"task '{task['name']}': none of the {len(chosen.cases)} slides in {path} is in "
            f"{config['slides_dir']}. Check the slide ids (file stems) against the table."
        )
    return present


TASK_SLIDES = {name: task_slide_ids(task) for name, task in TASKS.items()}


# --- external cohorts (a task's optional `external` part) ------------------------------------------


def external_slides(task):
    """Slides of a task's external cohort: found in its slides_dir and listed in its table. They
    are tiled and embedded like the rest, so an id must not clash with a slide of another folder.
    """
    ext = task["external"]
    found = discover_slides(ext["slides_dir"], config["slide_extensions"])
    clash = sorted(sid for sid in found if sid in SLIDES and SLIDES[sid] != found[sid])
    if clash:
        raise WorkflowError(
            f"task '{task['name']}': external slide id(s) {', '.join(clash)} also name slides of "
            f"{config['slides_dir']}; their outputs would collide. Rename one of each pair."
        )
    table = ext.get("slides_table") or ext["table"]
    rows = read_table(table, f"task '{task['name']}' external table", ["slide_id"]).rows
    listed = list(dict.fromkeys(row["slide_id"] for row in rows if row["slide_id"]))
    present = [sid for sid in listed if sid in found]
    if not present:
        raise WorkflowError(
            f"task '{task['name']}': none of the {len(listed)} slides in {table} is in "
            f"{ext['slides_dir']}. Check the external slide ids against the table."
        )
    SLIDES.update({sid: found[sid] for sid in present})
    return present


EXTERNAL_SLIDES = {
    name: external_slides(task) for name, task in TASKS.items() if task.get("external")
}
SLIDE_IDS = list(SLIDES)


# --- methods, encoders, folds -------------------------------------------------------------------

ENCODERS = list(dict.fromkeys(config["features"]["encoders"]))
VARIANTS = config["mil"]["variants"]
# methods, then the named variants (a method + switch overrides), each trained and reported
METHODS = list(dict.fromkeys(config["mil"]["methods"] + list(VARIANTS)))
FOLDS = list(range(config["mil"]["folds"]))
# [None] for one repeat (paths without a repeat folder), else 0..R-1 (.../repeat{r}/fold{k})
REPEATS = repeat_ids(config["mil"]["repeats"])
REPEAT = (
    "{repeat}" if REPEATS != [None] else None
)  # the repeat wildcard of the MIL paths
_unknown = [m for m in METHODS if m not in METHOD_TABLE and m not in VARIANTS]
if _unknown:
    raise WorkflowError(
        f"mil.methods: unknown method(s) {', '.join(_unknown)}; known: "
        f"{', '.join(METHOD_TABLE)} (see `wsi-mil methods`)."
    )
# what every other method is compared with in summary.csv and the report
REFERENCE = config["mil"]["reference"] or default_reference(METHODS, VARIANTS)


def teacher_of(method):
    """The baseline whose fold checkpoint initialises this method's (or variant's) teacher."""
    return methods.teacher_of(method, VARIANTS)


# Baselines needed as teachers are trained (and reported) even when not listed themselves.
TRAINED_METHODS = methods.training_order(METHODS, VARIANTS, REFERENCE)


def alternatives(values):
    """A wildcard regex matching exactly these names (never matches when the list is empty)."""
    return "|".join(re.escape(v) for v in values) or "(?!)"


wildcard_constraints:
    slide="[^/]+",
    encoder="[^/]+",
    method="[^/]+",
    task=alternatives(TASKS),
    fold=r"\d+",
    repeat=r"\d+",


# --- settings passed to the commands ------------------------------------------------------------


def write_if_changed(path, text):
    """Write a file the workflow makes while parsing, only when its text changes (so its mtime
    means something)."""
    if not os.path.isfile(path) or Path(path).read_text() != text:
        write_text(path, text)


def write_effective_config(cfg, path):
    """The validated config with defaults filled, for the commands' --config."""
    text = "# written by the workflow: the config it runs with, defaults filled in\n"
    text += yaml.safe_dump(json.loads(json.dumps(cfg)), sort_keys=False)
    write_if_changed(path, text)


write_effective_config(config, EFFECTIVE_CONFIG)


def train_settings_digest(w):
    """The digest of the MIL settings one train job uses: the shared ``mil`` keys (not the lists of
    what runs) plus this variant's own overrides, so editing a variant re-trains that variant only.
    """
    shared = settings_digest(
        "mil",
        drop=("methods", "variants", "reference", "repeats", "external_all_cases"),
    )
    own = json.dumps(VARIANTS.get(w.method), sort_keys=True)
    return hashlib.sha256((shared + own).encode()).hexdigest()[:16]


def settings_digest(*keys, drop=()):
    """A short hash of the config parts that change a stage's results.

    Used as a rule param, so Snakemake's params rerun trigger recomputes exactly the stages whose
    settings changed (tiling settings do not invalidate trained models, and so on).
    """
    parts = {}
    for key in keys:
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in drop}
        parts[key] = value
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def use_wsi_mil_command():
    """Make `wsi-mil`, the command every rule runs, resolvable in the jobs' shells.

    Under --use-conda the stage envs hold the dependencies but not this package, so a shim
    (workflow/scripts/wsi-mil) runs `python -m pipeline` from this checkout with the env's python.
    Otherwise the installed command is used; when snakemake was started as .venv/bin/snakemake
    without activating the venv, that venv's bin folder is put on PATH for the jobs.
    """
    prefix = "set -euo pipefail; "
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        shim = shlex.quote(str(WORKFLOW_ROOT / "workflow" / "scripts"))
        prefix += f'export PATH={shim}:"$PATH"; '
    elif shutil.which("wsi-mil") is None:
        bindir = os.path.dirname(sys.executable)
        if not os.access(os.path.join(bindir, "wsi-mil"), os.X_OK):
            raise WorkflowError(
                "the wsi-mil command is not installed in this environment. Run `pip install -e .` "
                "in the repository (or `make venv`), or run snakemake with --use-conda."
            )
        prefix += f'export PATH={shlex.quote(bindir)}:"$PATH"; '
    shell.prefix(prefix)


use_wsi_mil_command()


# --- output paths (all from OUT, pipeline/layout.py) ----------------------------------------------


def all_summaries():
    cv = [
        OUT.summary_json(task, encoder, method)
        for task in TASKS
        for encoder in ENCODERS
        for method in TRAINED_METHODS
    ]
    external = [
        OUT.external_summary(task, encoder, method)
        for task in EXTERNAL_SLIDES
        for encoder in ENCODERS
        for method in TRAINED_METHODS
    ]
    return (
        cv
        + external
        + [OUT.external_all_cases_summary(*job) for job in all_cases_jobs()]
    )


def all_cases_jobs():
    """(task, encoder, method) of every all-cases model (``mil.external_all_cases``; tasks with an
    external cohort only); none when the option is off."""
    if not config["mil"]["external_all_cases"]:
        return []
    return [
        (t, e, m) for t in EXTERNAL_SLIDES for e in ENCODERS for m in TRAINED_METHODS
    ]


def all_cases_inputs(w):
    """The train job's data, every CV fold of the method (their best epochs) and, for a method
    with a teacher, the baseline's all-cases model."""
    task = TASKS[w.task]
    inputs = {
        "features": [OUT.features(w.encoder, s) for s in TASK_SLIDES[w.task]],
        "table": task["table"],
        "slides_table": task_slides_table(task),
        "folds": method_fold_files(w.task, w.encoder, w.method),
    }
    if teacher_of(w.method):
        baseline = teacher_of(w.method)
        inputs["teacher"] = OUT.all_cases_file(w.task, w.encoder, baseline, "model")
        inputs["teacher_json"] = OUT.all_cases_file(
            w.task, w.encoder, baseline, "model_json"
        )
    return inputs


def _external_cohort_inputs(task, encoder, model, model_json):
    """A model and what it needs to predict a task's external cohort: features and tables."""
    ext = TASKS[task]["external"]
    inputs = {
        "model": model,
        "model_json": model_json,
        "features": [OUT.features(encoder, s) for s in EXTERNAL_SLIDES[task]],
        "table": ext["table"],
    }
    if ext.get("slides_table"):
        inputs["slides_table"] = ext["slides_table"]
    return inputs


def all_cases_external_inputs(w):
    """external_inputs of the all-cases model instead of a fold model."""
    return _external_cohort_inputs(
        w.task,
        w.encoder,
        OUT.all_cases_file(w.task, w.encoder, w.method, "model"),
        OUT.all_cases_file(w.task, w.encoder, w.method, "model_json"),
    )


def external_inputs(w):
    """What a fold model needs to predict the external cohort: the model, its features, tables."""
    repeat = wildcard_repeat(w)
    return _external_cohort_inputs(
        w.task,
        w.encoder,
        OUT.fold_file(w.task, w.encoder, w.method, w.fold, "model", repeat),
        OUT.fold_file(w.task, w.encoder, w.method, w.fold, "model_json", repeat),
    )


def external_heatmap_inputs(w):
    """The model that draws the external cohort's heatmaps: the all-cases model when
    ``mil.external_all_cases`` trains one, else the first fold model of the first repeat.
    """
    if config["mil"]["external_all_cases"]:
        return all_cases_external_inputs(w)
    fold, repeat = FOLDS[0], REPEATS[0]
    return _external_cohort_inputs(
        w.task,
        w.encoder,
        OUT.fold_file(w.task, w.encoder, w.method, fold, "model", repeat),
        OUT.fold_file(w.task, w.encoder, w.method, fold, "model_json", repeat),
    )


def external_files(task, encoder, method):
    """Every fold model's external predictions of a method (the external evaluate rule's inputs)."""
    return [
        OUT.external_predictions(task, encoder, method, k, r)
        for r in REPEATS
        for k in FOLDS
    ]


def train_inputs(w):
    """Every file a train job reads: the feature stores of the task's slides, its tables, its
    folds and, for a method with a teacher, the baseline's checkpoint of the same fold.
    """
    task = TASKS[w.task]
    inputs = {
        "features": [OUT.features(w.encoder, s) for s in TASK_SLIDES[w.task]],
        "table": task["table"],
        "slides_table": task_slides_table(task),
        "splits": OUT.splits(w.task, wildcard_repeat(w)),
    }
    if teacher_of(w.method):
        baseline, repeat = teacher_of(w.method), wildcard_repeat(w)
        inputs["teacher"] = OUT.fold_file(
            w.task, w.encoder, baseline, w.fold, "model", repeat
        )
        inputs["teacher_json"] = OUT.fold_file(
            w.task, w.encoder, baseline, w.fold, "model_json", repeat
        )
    return inputs


def wildcard_repeat(w):
    """The job's repeat (None when the run has one repeat and its paths no repeat folder)."""
    return getattr(w, "repeat", None) if REPEATS != [None] else None


def method_fold_files(task, encoder, method, key="metrics"):
    """One file of every fold of every repeat of a method (the evaluate rule's inputs)."""
    return [
        OUT.fold_file(task, encoder, method, k, key, r) for r in REPEATS for k in FOLDS
    ]


def teacher_flag(w, input):
    """--teacher-init with the baseline's fold folder, for methods that have a teacher."""
    if not teacher_of(w.method):
        return ""
    return f"--teacher-init {shlex.quote(os.path.dirname(input.teacher))}"


def heatmap_inputs(w):
    """What a heatmaps job reads: the train job's inputs, every fold of the method, the masks.
    With repeated CV the first repeat's folds score the slides (each slide once, out of fold).
    """
    task = TASKS[w.task]
    repeat = REPEATS[0]
    inputs = {
        "features": [OUT.features(w.encoder, s) for s in TASK_SLIDES[w.task]],
        "table": task["table"],
        "slides_table": task_slides_table(task),
        "splits": OUT.splits(w.task, repeat),
        "folds": [
            OUT.fold_file(w.task, w.encoder, w.method, k, "metrics", repeat)
            for k in FOLDS
        ],
    }
    if task.get("masks"):
        inputs["masks"] = task["masks"]
    return inputs


def masks_flag(w, input):
    return f"--masks {shlex.quote(input.masks)}" if "masks" in input.keys() else ""


def run_benchmarks():
    """The benchmark files of every job of this run, relative to the results folder."""
    jobs = [("tile", s) for s in SLIDE_IDS]
    jobs += [("extract", e, s) for e in ENCODERS for s in SLIDE_IDS]
    jobs += [
        ("splits", t, *([repeat_name(r)] if r is not None else []))
        for t in TASKS
        for r in REPEATS
    ]
    for t in TASKS:
        for e in ENCODERS:
            for m in TRAINED_METHODS:
                jobs += [
                    (
                        "train",
                        t,
                        e,
                        m,
                        *([repeat_name(r)] if r is not None else []),
                        fold_name(k),
                    )
                    for r in REPEATS
                    for k in FOLDS
                ]
                jobs.append(("evaluate", t, e, m))
                if t in EXTERNAL_SLIDES:
                    jobs += [
                        (
                            "external",
                            t,
                            e,
                            m,
                            *([repeat_name(r)] if r is not None else []),
                            fold_name(k),
                        )
                        for r in REPEATS
                        for k in FOLDS
                    ]
                    jobs.append(("external_evaluate", t, e, m))
    for t, e, m in all_cases_jobs():
        jobs += [("train_all_cases", t, e, m), ("external_all_cases", t, e, m)]
        jobs.append(("external_evaluate_all_cases", t, e, m))
    jobs += [("heatmaps", *parts) for parts in heatmap_jobs()]
    jobs += [("external_heatmaps", *parts) for parts in external_heatmap_jobs()]
    jobs += [("summary", "summary"), ("report", "report")]
    return [os.path.relpath(OUT.benchmark(*job), RESULTS) for job in jobs]


def heatmap_jobs():
    """(task, encoder, method) of every heatmaps job; none when ``heatmaps.enabled`` is false."""
    if not config["heatmaps"]["enabled"]:
        return []
    return [(t, e, m) for t in TASKS for e in ENCODERS for m in TRAINED_METHODS]


def heatmap_outputs():
    """The heatmap folders of this run (the report's inputs)."""
    return [OUT.heatmap_dir(*job) for job in heatmap_jobs()]


def external_heatmap_jobs():
    """(task, encoder, method) of every external cohort's heatmaps job (heatmaps enabled)."""
    if not config["heatmaps"]["enabled"]:
        return []
    return [
        (t, e, m) for t in EXTERNAL_SLIDES for e in ENCODERS for m in TRAINED_METHODS
    ]


def final_outputs():
    external = [OUT.external_heatmap_dir(*job) for job in external_heatmap_jobs()]
    return [OUT.summary_csv, *heatmap_outputs(), *external, OUT.report_html]
