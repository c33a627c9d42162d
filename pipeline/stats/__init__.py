"""Statistics for honest method comparison: intervals and paired tests, torch-free.

* :mod:`~pipeline.stats.delong` — DeLong's AUC variance, its interval and the paired test of two AUCs;
* :mod:`~pipeline.stats.bootstrap` — case-level bootstrap intervals and the paired bootstrap difference;
* :mod:`~pipeline.stats.repeated` — repeated-CV mean with its interval, the Nadeau–Bengio corrected
  t-test, and a comparison in words;
* :mod:`~pipeline.stats.metrics` — the project's metrics as (vectorised) resampling callables;
* :mod:`~pipeline.stats.compare` — the flat records ``summary.csv`` is made from.
"""

from pipeline.stats.compare import (
    MethodResults,
    compare_methods,
    summarise_method,
    summary_columns,
)

__all__ = ["MethodResults", "compare_methods", "summarise_method", "summary_columns"]
