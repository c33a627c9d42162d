"""Synthetic pyramidal Aperio-style slides with known tissue and tumour, for the demo and the tests.

Why: every stage needs slides whose truth is known (where the tissue is, where the tumour is, which MPP
and magnification the scanner wrote) and that open like real scanner files in openslide and tiffslide.
A slide is described by smooth fields on a low-resolution grid (``mask_mpp`` µm/px, 8 by default); the
ground-truth masks are those fields sampled at the grid points and level 0 is the same fields bilinearly
interpolated, painted with H&E-like colours and nuclei. So mask pixel ``(i, j)`` covers level-0 pixels
``[j*d, (j+1)*d) × [i*d, (i+1)*d)`` with ``d = mask_mpp / mpp``, exactly.

Modules, one job each:

- ``fields``: the mask-scale fields (tissue with holes, tumour, decoys, stain drift, pen ink);
- ``painter``: any level-0 region from the fields (colour table, nuclei, ink), seamless across tiles;
- ``writer``: one slide streamed into a pyramidal ``.svs``, and its ``SlideTruth``;
- ``cohort``: a planned cohort of slides with labels, survival times and mask PNGs.
"""

from pipeline.synth.cohort import (
    MASK_CONVENTION,
    SURVIVAL_MODEL,
    CohortSlide,
    Extras,
    make_cohort,
    plan_cohort,
    survival_table,
)
from pipeline.synth.fields import INK_RGB
from pipeline.synth.writer import MAGNIFICATION_MPP, SlideTruth, write_synthetic_slide

__all__ = [
    "INK_RGB",
    "MAGNIFICATION_MPP",
    "MASK_CONVENTION",
    "SURVIVAL_MODEL",
    "CohortSlide",
    "Extras",
    "SlideTruth",
    "make_cohort",
    "plan_cohort",
    "survival_table",
    "write_synthetic_slide",
]
