"""Recovering a Snakemake run that was killed hard (SIGKILL, OOM killer, a closed terminal, power loss).

Snakemake marks its working directory as locked while it runs (``.snakemake/locks/``) and removes the
marks when it ends; a run killed with SIGKILL leaves them, and the next run stops with a
``LockException`` until someone runs ``snakemake --unlock``. Snakemake cannot tell a dead run's marks
from a live run's. This workflow can: every run holds an exclusive ``flock`` on
``.snakemake/wsi-mil.lock`` from parsing until it exits, and the kernel drops it when the process dies,
however it dies. A run that gets it knows no other run of this workflow is alive in this directory on
this machine, so marks left in ``.snakemake/locks/`` are stale and it removes them (what ``--unlock``
does). A run that cannot get it leaves everything alone, and Snakemake reports the other run as usual.

Marks left by a run on another machine (a shared file system) are never removed: that run may still be
alive. The lock file names the host and process that hold it, for that message.

Only the main Snakemake process does this; the Snakemake processes that run single jobs (cluster jobs,
``run:`` blocks) parse the workflow too and must not touch the directory's locks. Imports only the
standard library (it runs while Snakemake parses the workflow).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

LOCK_NAME = "wsi-mil.lock"

_held: list = []  # the open lock file: kept for the life of the process, or the flock is dropped


def claim_workdir(workdir: str | os.PathLike = ".") -> str | None:
    """Hold this directory's run lock and clear Snakemake's stale lock marks; a line to log, or None.

    Returns what was done or why nothing was (another run holds the directory), for Snakemake's log.
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
    except OSError:  # held by a live run (or no flock on this file system)
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        return f"another run of this workflow holds {state} ({holder}); its locks are left alone"
    handle.seek(0)
    previous = handle.read().split()
    handle.seek(0)
    handle.truncate()
    handle.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
    handle.flush()
    _held.append(handle)
    if not _has_marks(marks):
        return None
    last_host = previous[1] if len(previous) >= 2 and previous[0] == "host" else None
    if last_host is not None and last_host != socket.gethostname():
        return (
            f"{marks} was locked by a run on {last_host}; if that run has ended, "
            "run `snakemake --unlock` once"
        )
    shutil.rmtree(marks, ignore_errors=True)
    return (
        f"removed the locks a killed run left in {marks} (no other run of this workflow is alive)"
    )


def _has_marks(marks: Path) -> bool:
    try:
        return any(marks.iterdir())
    except OSError:
        return False
