"""The summary report: reads the workflow's outputs (never recomputes them) and writes one HTML page.

``collect`` gathers what the stages wrote (tile attrs, feature shapes, fold predictions, Snakemake
benchmark files), ``plots`` draws the figures, ``html`` lays them out in a self-contained page.
"""
