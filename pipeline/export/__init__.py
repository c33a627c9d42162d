"""Hand-off to other tools: QuPath GeoJSON of a slide's tissue, patches and scores; CLAM/TRIDENT h5."""
