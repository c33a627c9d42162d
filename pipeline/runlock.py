"""Recovering a Snakemake run that was killed hard (SIGKILL, OOM killer, a closed terminal, power loss).

Snakemake marks its working directory as locked while it runs (``.snakemake/locks/``) and removes the
marks when it ends; a run killed with SIGKILL leaves them, and the next run stops with a
``LockException`` until someone runs ``snakemake --unlock``. Snakemake cannot tell a dead run's marks
from a live run's. This workflow can: every run holds an exclusive ``flock`` on
``.snakemake/wsi-mil.lock`` from parsing until it exits, and the kernel drops it when the process dies,
however it dies. A run that gets it knows no other run of this workflow is alive in this directory on
this machine, so marks left in ``.snakemake/locks/`` are stale and it removes them (what ``--unlock``
does). A run that cannot get it leaves everything alone; if it would write (anything but a dry run,
a listing, a lint or a report), it stops at once with one line naming the run that holds the folder
(process id, host, start time, command): Snakemake's own lock only guards the files of overlapping
DAGs, is checked and then written (two runs started at once both pass the check), and a second run
that finds it held ends with a ``LockException`` that advises ``--unlock`` -- which removes the live
run's marks. Reading commands go on while a run is alive, as Snakemake allows, and take no lock, so
they never block a writing run.

Marks left by a run on another machine (a shared file system) are never removed: that run may still be
alive. The lock file names the host and process that hold it, for that message.

Only the main Snakemake process does this; the Snakemake processes that run single jobs (cluster jobs,
``run:`` blocks) parse the workflow too and must not touch the directory's locks. Imports only the
standard library and ``pipeline.errors`` (it runs while Snakemake parses the workflow); Snakemake's
argument parser only inside :func:`is_writer`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.lifeline import pid_alive

LOCK_NAME = "wsi-mil.lock"
# Snakemake options after which a run only reads the folder (they may run beside a live run)
READ_ONLY = (
    "dryrun", "summary", "detailed_summary", "list_rules", "list_target_rules", "list_changes",
    "list_code_changes", "list_input_changes", "list_params_changes", "list_untracked", "dag",
    "d3dag", "rulegraph", "filegraph", "lint", "report", "nolock", "print_compilation",
)  # fmt: skip


class WorkdirInUse(PipelineError):
    """Another live run of this workflow holds the folder: this run would be a second writer."""


_held: list = []  # the open lock file: kept for the life of the process, or the flock is dropped


def claim_workdir(workdir: str | os.PathLike = ".", writer: bool = True) -> str | None:
    """Hold this directory's run lock and clear Snakemake's stale lock marks; a line to log, or None.

    Returns what was done or why nothing was (another run holds the directory), for Snakemake's log.
    Raises :class:`WorkdirInUse` when another run holds the directory and this one is a ``writer``.
    Never raises for a file system without ``flock``: Snakemake's own locking then applies unchanged.
    """
    import fcntl

    if _held:  # parsed again in the same process: it holds the lock already
        return None
    state = Path(workdir) / ".snakemake"
    marks = state / "locks"
    try:
        state.mkdir(parents=True, exist_ok=True)
        handle = open(state / LOCK_NAME, "a+")  # noqa: SIM115 - held open on purpose
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:  # held by a live run (or no flock on this file system)
        held = err.errno in (errno.EAGAIN, errno.EACCES)
        handle.seek(0)
        holder = describe(_live_holder(handle) if held else _read_holder(handle.read()))
        handle.close()
        if writer and held:
            raise WorkdirInUse(
                Path(workdir).resolve(),
                f"in use by another run of this workflow ({holder})",
                "Wait for it to end (or stop it), then run the same command again; "
                "a dry run (-n) may look meanwhile.",
            ) from None
        return f"another run of this workflow holds {state} ({holder}); its locks are left alone"
    if not writer:  # a dry run needs no lock (Snakemake only warns of marks) and must not block one
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        return None
    handle.seek(0)
    previous = _read_holder(handle.read())
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_this_process()) + "\n")
    handle.flush()
    _held.append(handle)
    if not _has_marks(marks):
        return None
    last_host = previous.get("host")
    if last_host is not None and last_host != socket.gethostname():
        return (
            f"{marks} was locked by a run on {last_host}; if that run has ended, "
            "run `snakemake --unlock` once"
        )
    shutil.rmtree(marks, ignore_errors=True)
    return (
        f"removed the locks a killed run left in {marks} (no other run of this workflow is alive)"
    )


def is_writer(argv: list[str] | None = None) -> bool:
    """Whether this Snakemake invocation may write outputs (what a second run must not do).

    Asks Snakemake's own argument parser, so option spellings and bundles (``-np``) read as
    Snakemake reads them; when it cannot tell, the run counts as a writer.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        from snakemake.cli import get_argument_parser

        parsed, _ = get_argument_parser().parse_known_args(args)
    except BaseException:  # noqa: BLE001 - argparse exits on what it cannot parse
        return True
    return not any(getattr(parsed, name, None) for name in READ_ONLY)


def describe(holder: dict) -> str:
    """``pid 12 on host h, started 2026-01-02 03:04:05 UTC: snakemake --cores 2`` (what is known)."""
    if not holder:
        return "another process"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    if holder.get("command"):
        text += f": {holder['command']}"
    return text


def _this_process() -> dict:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("snakemake/__main__.py", "/snakemake")):
        argv[0] = "snakemake"
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(argv),
    }


def _live_holder(handle, wait_s: float = 2.0) -> dict:
    """The holder the lock file names. A run that has just taken the lock writes its name a moment
    later: until then the file names the previous (ended) run, so wait for a live process."""
    deadline = time.monotonic() + wait_s
    while True:
        handle.seek(0)
        holder = _read_holder(handle.read())
        if holder and (holder.get("host") != socket.gethostname() or pid_alive(holder.get("pid"))):
            return holder
        if time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


def _read_holder(text: str) -> dict:
    """The lock file's holder: JSON, or the older ``host H pid P`` line."""
    try:
        found = json.loads(text)
        return found if isinstance(found, dict) else {}
    except ValueError:
        words = text.split()
        return dict(zip(words[::2], words[1::2], strict=False)) if words[:1] == ["host"] else {}


def _has_marks(marks: Path) -> bool:
    try:
        return any(marks.iterdir())
    except OSError:
        return False
