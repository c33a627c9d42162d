"""Subcommands of `wsi-mil`; one module each (see :mod:`pipeline.cli`)."""
