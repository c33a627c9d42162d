"""Heatmaps: per-patch score stores, pictures, top-patch galleries and localisation metrics."""
