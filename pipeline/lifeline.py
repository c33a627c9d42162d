"""A workflow job ends when the Snakemake process that started it dies.

Snakemake runs each job as ``bash -c '... wsi-mil ...'`` from one of its threads. When Snakemake is
killed with SIGKILL nothing reaches the job: bash waits for ``wsi-mil``, and ``wsi-mil`` keeps
extracting or training for a run that no longer exists, holds the GPU, and may publish an output the
next run is already recomputing. ``PR_SET_PDEATHSIG`` does not help here: it fires when the *parent*
dies (bash, which outlives nothing) or, worse, when the Snakemake *thread* that forked the job exits.

So the workflow exports its own process id as ``WSI_MIL_WATCH_PID`` while it parses (each cluster
job's Snakemake re-exports its own), and :func:`watch` — called by the CLI before any command runs —
waits on that process (a pidfd on Linux, else polling) when it is one of our ancestors. When it ends,
the job gets SIGTERM, which the CLI turns into a clean stop: temporary outputs are removed, nothing is
published, exit status 143. Run by hand (no such ancestor), nothing is watched.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from pathlib import Path

ENV = "WSI_MIL_WATCH_PID"
GRACE_S = 60.0  # after SIGTERM, a job stuck in native code is ended without cleanup
reason: list[str] = []  # why the job was stopped, for the CLI's last line


def export_for_jobs() -> None:
    """Called while Snakemake parses the workflow: jobs started from here watch this process."""
    os.environ[ENV] = str(os.getpid())


def watch() -> int | None:
    """Start watching ``$WSI_MIL_WATCH_PID`` if it is an ancestor of this process; its pid, or None."""
    try:
        pid = int(os.environ.get(ENV, ""))
    except ValueError:
        return None
    if pid <= 1 or pid == os.getpid() or not is_ancestor(pid):
        return None
    threading.Thread(target=_wait_then_stop, args=(pid,), name="lifeline", daemon=True).start()
    return pid


def is_ancestor(pid: int) -> bool:
    """Whether ``pid`` is this process's parent, grandparent, ... (Linux /proc; else the parent only)."""
    current = os.getppid()
    for _ in range(64):
        if current == pid:
            return True
        if current <= 1:
            return False
        current = _parent_of(current)
        if current is None:
            return False
    return False


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    return int(stat.rsplit(")", 1)[1].split()[1])


def _wait_then_stop(pid: int) -> None:
    _wait_for_exit(pid)
    reason.append(f"the Snakemake process (pid {pid}) that started this job has ended")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(143)


def _wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # not Linux >= 5.3: poll
        while pid_alive(pid):
            time.sleep(1.0)
        return
    try:
        select.select([fd], [], [])  # readable once the process has exited
    finally:
        os.close(fd)


def pid_alive(pid: object) -> bool:
    """Whether a process with this id exists on this machine (one we may not signal counts as alive;
    a missing or malformed id as dead). The one liveness test of the lifeline, the run lock and the
    stale-temporary sweep."""
    try:
        os.kill(int(pid), 0)  # type: ignore[arg-type]
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
