"""The two pieces of hard-kill recovery, without Snakemake (tests/workflow/test_recovery.py runs them
for real): stale lock marks are cleared only when no run holds the folder, and a job stops when the
Snakemake process that started it dies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux only")

CLAIM = "from pipeline.runlock import claim_workdir; print(claim_workdir({!r}), flush=True)"
READ = "from pipeline.runlock import claim_workdir; print(claim_workdir({!r}, writer=False))"


def python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **kwargs
    )


def test_stale_locks_are_cleared_only_when_no_run_holds_the_folder(tmp_path):
    marks = tmp_path / ".snakemake" / "locks"
    marks.mkdir(parents=True)
    (marks / "0.output.lock").write_text("results/a.zarr\n")
    claim = CLAIM.format(str(tmp_path))

    holder = python(claim + "; import time; time.sleep(60)")  # a live run of this workflow
    try:
        assert holder.stdout.readline().strip().startswith("removed the locks a killed run left")
        marks.mkdir()  # the live run locks again
        (marks / "0.output.lock").write_text("results/a.zarr\n")
        second = python(READ.format(str(tmp_path)))  # a dry run beside the live run
        out, _ = second.communicate(timeout=60)
        assert out.strip().startswith(
            f"another run of this workflow holds {tmp_path / '.snakemake'}"
        )
        assert (marks / "0.output.lock").exists()  # the live run's locks are left alone
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock
        holder.wait()
    third = python(claim)
    out, _ = third.communicate(timeout=60)
    assert out.strip() == (
        f"removed the locks a killed run left in {marks} (no other run of this workflow is alive)"
    )
    assert not marks.exists()


def test_a_second_writer_stops_naming_the_run_that_holds_the_folder(tmp_path):
    """The line names the live run's pid, host, start time and command; its locks stay."""
    import socket

    holder = python(CLAIM.format(str(tmp_path)) + "; import time; time.sleep(60)")
    try:
        assert holder.stdout.readline().strip() == "None"
        second = subprocess.run(
            [sys.executable, "-c", CLAIM.format(str(tmp_path))], capture_output=True, text=True
        )
        assert second.returncode != 0 and second.stdout == ""
        last = second.stderr.strip().splitlines()[-1]
        assert re.fullmatch(
            rf"pipeline\.runlock\.WorkdirInUse: ERROR {re.escape(str(tmp_path))}: in use by another "
            rf"run of this workflow \(pid {holder.pid} on host {re.escape(socket.gethostname())}, "
            r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: -c\)\. Wait for it to end .*",
            last,
        ), last
    finally:
        holder.kill()
        holder.wait()
    after = subprocess.run(
        [sys.executable, "-c", CLAIM.format(str(tmp_path))], capture_output=True, text=True
    )
    assert after.returncode == 0 and after.stdout.strip() == "None"  # free once it has ended


def test_which_invocations_write():
    from pipeline.runlock import is_writer

    assert is_writer(["--cores", "2", "--configfile", "c.yaml"])
    assert is_writer(["--unlock"])  # would remove a live run's locks
    assert is_writer(["--touch"])
    assert not is_writer(["--cores", "1", "-np"])
    assert not is_writer(["--dry-run"]) and not is_writer(["--summary"])
    assert not is_writer(["--lint"]) and not is_writer(["--dag"])


def test_a_job_stops_when_the_snakemake_that_started_it_dies(tmp_path):
    """Snakemake -> bash -> job; kill -9 of Snakemake alone: the job ends by itself (SIGTERM)."""
    (tmp_path / "job.py").write_text(
        "import time\nfrom pipeline import lifeline\n"
        "print(lifeline.watch(), flush=True)\ntime.sleep(60)\nprint('still running', flush=True)\n"
    )
    (tmp_path / "snakemake.py").write_text(
        "import subprocess, sys, time\nfrom pipeline import lifeline\n"
        "lifeline.export_for_jobs()\n"
        f"job = 'set -euo pipefail; {sys.executable} {tmp_path / 'job.py'} > {tmp_path / 'job.out'}'\n"
        "shell = subprocess.Popen(['bash', '-c', job])\n"
        "print(shell.pid, flush=True)\ntime.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, str(tmp_path / "snakemake.py")],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    out = tmp_path / "job.out"
    try:
        shell = int(parent.stdout.readline())
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text().strip()):
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.1)
        assert out.read_text().split() == [str(parent.pid)]  # it watches its Snakemake
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while _state(shell) not in (None, "Z", "X"):
            assert time.monotonic() < deadline, "the job outlived its Snakemake"
            time.sleep(0.1)
        assert "still running" not in out.read_text()
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
