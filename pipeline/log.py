"""Logging set up once for every command: time, level, stage and slide, then what is happening."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)-7s [%(stage)s%(slide_sep)s%(slide)s] %(message)s"


class _ContextFilter(logging.Filter):
    """Fills ``stage``/``slide`` so format strings never fail on records from third-party loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.stage = getattr(record, "stage", None) or record.name.removeprefix("pipeline.")
        slide = getattr(record, "slide", None) or ""
        record.slide = slide
        record.slide_sep = " " if slide else ""
        return True


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once (idempotent), writing to stderr so stdout stays machine-readable."""
    root = logging.getLogger()
    if any(getattr(h, "_wsi_mil", False) for h in root.handlers):
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        return
    # the process's real stderr: a stream swapped in later (and closed) by a caller or test harness
    # must not become the log's destination
    handler = logging.StreamHandler(sys.__stderr__)
    handler._wsi_mil = True  # type: ignore[attr-defined]
    handler.addFilter(_ContextFilter())
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in (
        "PIL",
        "matplotlib",
        "urllib3",
        "numcodecs",
        "numexpr",
        "asyncio",
        "fsspec",
        "h5py",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(stage: str, slide: str | None = None) -> logging.LoggerAdapter:
    """A logger whose records carry the stage and (optionally) the slide they concern."""
    return logging.LoggerAdapter(
        logging.getLogger(f"pipeline.{stage}"), {"stage": stage, "slide": slide}
    )
