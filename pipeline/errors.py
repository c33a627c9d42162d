"""The errors a user sees as one line: what failed, where, and what to do.

:class:`PipelineError` is the base every stage raises and the CLI renders. Its subclasses say what
kind of failure it is, so callers decide by type rather than by reading the message:
:class:`SlideReadError` (one slide is unusable; may be recorded as a failed slide and the cohort goes
on), :class:`ConfigError` (the settings are wrong; the run stops) and :class:`TableError` (an input
table is wrong; the run stops).
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure the user can act on.

    Rendered as ``ERROR <where>: <cause>. <what to do>`` by the CLI, so every stage reports bad input
    the same way (one line, the slide or file named first) and exits non-zero.
    """

    def __init__(self, where: str, cause: str, remedy: str = "") -> None:
        self.where = str(where)
        self.cause = cause.rstrip(".")
        self.remedy = remedy.strip()
        super().__init__(self.line())

    def __reduce__(self):
        # Rebuilt from its parts when it crosses a process boundary (DataLoader workers).
        return (type(self), (self.where, self.cause, self.remedy))

    def line(self) -> str:
        text = f"ERROR {self.where}: {self.cause}."
        if self.remedy:
            text += f" {self.remedy}"
        return text


class ConfigError(PipelineError):
    """The settings are wrong (config file, schema, a name that is not registered).

    Known before any slide is touched and the same for every slide, so it stops the run; it is never
    recorded as a failed slide.
    """


class TableError(PipelineError):
    """An input table (labels, slide sheet, splits) is missing, unreadable or lacks a column."""


class SlideReadError(PipelineError):
    """One slide cannot be used as it is: not openable, pixels unreadable, no usable pixel size.

    The only kind the workflow may record as a failed slide (``--record-failure``) so the other
    slides carry on; ``where`` is the slide's path.
    """
