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


class FileSystemError(PipelineError):
    """Writing or reading a file failed at the operating system (disk full, no permission, I/O error).

    Not the input's fault and the same for every slide on that disk, so it is never recorded as a
    failed slide; nothing half-written is published (outputs are written to a temporary name first).
    """


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), at most ``limit``
    characters: libraries append paragraphs of advice that do not belong in a one-line error."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


_IO_REMEDIES = {
    "ENOSPC": "The disk is full: free space there (df -h) or write the results elsewhere, then re-run.",
    "EDQUOT": "Your disk quota is used up: free space (quota -s) or write elsewhere, then re-run.",
    "EACCES": "You may not write or read there: check the permissions, or use another folder.",
    "EPERM": "You may not write or read there: check the permissions, or use another folder.",
    "EROFS": "The file system is read-only: write the results elsewhere.",
    "ENOENT": "Check that the path exists.",
    "EIO": "The disk reported an I/O error: check the disk (dmesg), then re-run.",
}


def io_error(err: OSError, path: object = None) -> FileSystemError:
    """The one-line form of an ``OSError``: the file it names (else ``path``), the cause, what to do.

    Errors from ``write()`` on an open file carry no file name; callers that know what they were
    writing pass it as ``path``.
    """
    import errno

    if isinstance(path, list | tuple):  # a command with several outputs (-o A -o B)
        path = path[0] if len(path) == 1 else ", ".join(map(str, path)) if path else None
    where = _published_name(err.filename) if err.filename is not None else path
    code = errno.errorcode.get(err.errno or -1, "")
    text = (err.strerror or str(err) or type(err).__name__).rstrip(".")
    cause = f"{text} ({code})" if code else text
    if code == "ENOSPC" and where is not None:
        cause = f"{text} ({code}; {free_space(where)} free there)"
    if err.filename2 is not None:
        cause += f" (with {err.filename2})"
    return FileSystemError(
        where if where is not None else "(file system)",
        cause,
        _IO_REMEDIES.get(code, "Check the path and the disk it is on, then re-run."),
    )


def free_space(path: object) -> str:
    """What is free on the file system of ``path`` (or of its nearest existing folder): ``12.0 KiB``.

    A full disk is reported with it, so the user sees how little is left where the output goes
    (the disk of the results folder, not the one they may be looking at).
    """
    import os
    import shutil

    folder = os.path.abspath(str(path).split(", ")[0])
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown space"
    for unit in ("B", "KiB", "MiB"):
        if free < 1024:
            return f"{free:.0f} B" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return f"{free:.1f} GiB"


def _published_name(filename: object) -> object:
    """The output a temporary belongs to: ``out/.s.zarr.tmp-123-0a1b2c3d/features/c/0`` → ``out/s.zarr``.

    Outputs are written under a hidden temporary sibling (``pipeline.store``); a user has never seen
    that name, and it is gone by the time they read the message.
    """
    import re

    text = str(filename)
    match = re.search(r"(^|/)\.([^/]+)\.tmp-\d+-[0-9a-f]{8}(/|$)", text)
    return text[: match.start()] + match.group(1) + match.group(2) if match else filename
