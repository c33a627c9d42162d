"""List the MIL methods `wsi-mil train --method` accepts, with their family and baseline.

A method with a baseline (MHIM-MIL) needs that baseline trained on the same fold first: its checkpoint
initialises the teacher (`wsi-mil train --teacher-init DIR`); `wsi-mil cv` and the workflow do this order.
After the table: the `mil` keys that decide how every method is trained and judged (model selection,
survival losses, gradient accumulation) and the reference baselines.
"""

from __future__ import annotations

HELP = (
    "list the MIL methods (name, family, baseline for the teacher, description), the model-selection"
    " modes, survival losses and reference baselines"
)


# Printed after the table: how every method is trained and judged (the mil keys that apply to all).
NOTES = """
Training and selection (mil keys; apply to every method; defaults: selection={selection},
inner_folds={inner_folds}, accumulate={accumulate}, survival_loss={survival_loss}):
  selection    how the model of an outer fold is chosen without the test fold (protocol: holdout):
               ensemble_full (default) inner_folds-fold CV of the training part (val part
                            merged in; the inner models train together and stop after `patience`
                            epochs without a better mean inner score; e* = the best epoch), then one
                            model on the whole training part to e*; the inner models and it average
                            their outputs. model.pt holds all of them: `wsi-mil predict` and heatmaps
                            apply exactly what was evaluated. The only variant within 0.05 of the
                            optimistic protocol on every synthetic set measured; ~inner_folds + 1
                            trainings per fold
               ensemble     the inner models at e* only (no whole-part model)
               inner_cv     the whole-part model at e* only
               inner_cv_swa inner_cv with its weights averaged over epochs [e*/2, e*]
               holdout      early stop on the val_fraction part (a dozen cases in a 100-case cohort):
                            the classic protocol, one training per fold
               fixed        all `epochs` on the whole training part, no selection
               protocol: paper (the test fold selects: optimistic, labelled so) ignores it.
  accumulate   cases per optimiser step (gradient of their mean loss); 1 = one-case updates
  survival_loss
               nll  discrete-time negative log-likelihood over survival_bins, per case
               cox  Breslow partial likelihood over each group of `accumulate` (>= 2) cases
                    (risks of bags of different lengths, one loss), MHIM's teacher included

Reference baselines (family `reference`): meanpool and maxpool, a linear model on standardised bag
means / per-feature maxima, trained by the same trainer (logistic / the survival head). They are in the
default mil.methods; summary.csv and the report check every MIL method against meanpool of the same
task and encoder (below_reference: the 95 % interval of method - meanpool over folds lies below 0).
mil.reference (the method-vs-method comparison) defaults to the first MIL baseline, not to meanpool.
Measurements behind the defaults: BENCHMARKS.md, "Honest MIL".
"""


def add_arguments(parser) -> None:
    parser.add_argument("--names", action="store_true", help="print only the names, one per line")


def run(args) -> int:
    import textwrap

    from pipeline.methods import list_methods

    methods = list_methods()
    if args.names:
        print("\n".join(m["name"] for m in methods))
        return 0
    width = max(len(m["name"]) for m in methods)
    print(f"{'method':<{width}}  {'family':<9} {'baseline':<9} description")
    for m in methods:
        lines = textwrap.wrap(m["description"], 80) or [""]
        print(f"{m['name']:<{width}}  {m['family']:<9} {m['baseline'] or '-':<9} {lines[0]}")
        for line in lines[1:]:
            print(" " * (width + 22) + line)
    print(notes())
    return 0


def notes() -> str:
    """:data:`NOTES` with the schema's defaults filled in."""
    from pipeline.settings import MILSettings

    d = MILSettings.defaults()
    return NOTES.format(
        selection=d.selection,
        inner_folds=d.inner_folds,
        accumulate=d.accumulate,
        survival_loss=d.survival_loss,
    ).rstrip()
