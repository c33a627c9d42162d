"""Multiple-instance learning on slide feature bags: models (``pipeline.mil.models``), MHIM-MIL and MSM-MIL."""
