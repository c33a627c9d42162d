"""One error type whose message is the single line a user sees: what failed, where, and what to do."""

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
