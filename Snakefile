# wsi-mil workflow: slides -> tissue patches -> features -> MIL models -> report.
#
#   snakemake --cores 8                                   # current environment
#   snakemake --cores 8 --use-conda                       # one conda env per stage (envs/)
#   snakemake --workflow-profile workflow/profiles/slurm  # on a SLURM cluster
#
# Thin on purpose: the config is validated here, the rules live in workflow/rules/ and call the
# `wsi-mil` command, so every step can also be run by hand.

import sys

from snakemake.utils import min_version, validate

min_version("8.10")

sys.path.insert(
    0, workflow.basedir
)  # the `pipeline` package, also when snakemake is installed alone
from pipeline.config import config_errors
from pipeline import lifeline, recovery, runlock

# Recovery from a hard kill (README, "Stopping and resuming"): jobs stop when this process dies, and
# lock marks left by a killed run are cleared when no other run of this workflow is alive here.
lifeline.export_for_jobs()
# A second run that would write here while one is alive stops with one line naming that run.
if getattr(workflow, "is_main_process", True):
    try:
        note = runlock.claim_workdir(writer=runlock.is_writer())
    except runlock.WorkdirInUse as err:
        print(err.line(), file=sys.stderr)
        sys.exit(1)
    if note:
        print(note, file=sys.stderr)


configfile: "config.yaml"


# One clear line per problem first (key, value, what was expected); then Snakemake's own check.
if problems := config_errors(config, source="config"):
    raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# A fold folder missing a file (a deleted model.json) looks finished to Snakemake: train it again.
if getattr(workflow, "is_main_process", True):
    _writer = runlock.is_writer()
    for _line in recovery.reopen_incomplete_folds(OUT.root, remove=_writer):
        print(_line, file=sys.stderr)


include: "workflow/rules/tiling.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/mil.smk"
include: "workflow/rules/heatmaps.smk"
include: "workflow/rules/viewer.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
        viewer_outputs(),
