# Helpers of viewer.smk (kept apart from its rules, as Snakemake's lint asks): which tasks and slides
# get viewer pages and GeoJSON, the heatmap folders they read, and the early check of the viewer library.


def viewer_tasks():
    """The tasks that get viewer pages and GeoJSON (none unless viewer and heatmaps are on)."""
    if not (config["viewer"]["enabled"] and config["heatmaps"]["enabled"]):
        return []
    return list(TASKS)


def check_viewer_library():
    """Stop at the start, not after training, when the pages could not be written."""
    from pipeline.errors import PipelineError
    from pipeline.viewer.assets import openseadragon_dir

    try:
        openseadragon_dir()
    except PipelineError as err:
        raise WorkflowError(err.line())


if viewer_tasks():
    check_viewer_library()


def viewer_slides(task):
    """A task's slides: its training cohort, then its external cohort."""
    return list(dict.fromkeys(TASK_SLIDES[task] + EXTERNAL_SLIDES.get(task, [])))


def viewer_heatmaps(task, external=False):
    """The heatmap folders of every encoder x method of a task (cv, or its external cohort)."""
    if external and task not in EXTERNAL_SLIDES:
        return []
    folder = OUT.external_heatmap_dir if external else OUT.heatmap_dir
    return [folder(task, e, m) for e in ENCODERS for m in TRAINED_METHODS]


def viewer_inputs(w):
    slides = viewer_slides(w.task)
    return {
        "slides": [SLIDES[s] for s in slides],
        "tiles": [OUT.tiles(s) for s in slides],
        "heatmaps": viewer_heatmaps(w.task),
        "external": viewer_heatmaps(w.task, external=True),
    }


def viewer_outputs():
    """The viewer and GeoJSON folders of this run (targets of `all`, inputs of the report)."""
    return [OUT.viewer_dir(t) for t in viewer_tasks()] + [
        OUT.geojson_dir(t) for t in viewer_tasks()
    ]


def viewer_external_flag(w, input):
    if not input.external:
        return ""
    return "--external-heatmaps " + " ".join(shlex.quote(p) for p in input.external)


def viewer_benchmarks():
    """The viewer jobs' benchmark files, relative to the results (the report's run-time table)."""
    if not viewer_tasks():
        return []
    jobs = [("viewer_tiles", s) for s in SLIDE_IDS]
    jobs += [(rule, t) for t in viewer_tasks() for rule in ("geojson", "viewer")]
    return [os.path.relpath(OUT.benchmark(*job), RESULTS) for job in jobs]
