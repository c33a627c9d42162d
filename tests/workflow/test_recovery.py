"""A Snakemake run killed with SIGKILL is recovered by running the same command again (README,
"Stopping and resuming"), with outputs identical to a clean run, and its jobs do not outlive it.

Three things a hard kill used to leave behind, each made to happen here on purpose:
- orphaned jobs: ``kill -9`` of the Snakemake process alone left its extract job running;
- Snakemake's lock marks, which made the next run stop with a LockException;
- a job that finished after Snakemake could record it (its output exists but is marked incomplete),
  which made the next run stop with IncompleteFilesException.
Extraction runs as group jobs (workflow/rules/features.smk): a group job stages each slide's store and
the per-slide ``extract`` job moves it into place, so the kills land in the group job.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import read_array

pytestmark = pytest.mark.slow


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def jobs_in(workdir: Path) -> list[int]:
    """Live processes working in ``workdir`` (Snakemake's job shells and their `wsi-mil`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != workdir:
                continue
        except OSError:
            continue
        if _state(int(entry.name)) not in (None, "Z", "X"):
            found.append(int(entry.name))
    return found


def wait_for(condition, what: str, timeout: float = 300, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"snakemake ended before {what}"
        assert time.monotonic() < deadline, f"not seen in {timeout:.0f} s: {what}"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_hard_kill_is_recovered_by_the_same_command(e2e, wf, job_counts, tmp_path):
    work = wf.copy_run(e2e, tmp_path / "run").resolve()
    feats = work / "results" / "features" / wf.ENCODER
    staging = work / "results" / "staging" / "features" / wf.ENCODER
    ok = sorted(p.name[: -len(".zarr")] for p in feats.glob("*.zarr") if wf.BROKEN not in p.name)
    clean = {sid: read_array(feats / f"{sid}.zarr", "features") for sid in ok[:2]}
    for sid in clean:
        shutil.rmtree(feats / f"{sid}.zarr")
    targets = [f"results/features/{wf.ENCODER}/{sid}.zarr" for sid in clean]
    command = wf.snakemake_cmd(work, "--cores", "1", *targets)

    def start(log: str) -> subprocess.Popen:
        with open(tmp_path / log, "w") as out:
            return subprocess.Popen(
                command, cwd=work, env=wf.snakemake_env(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def extracting() -> str | None:
        """The slide whose store the group job is writing now (hidden temporary in staging)."""
        tmp = [p.name for p in staging.glob(".*.zarr.tmp-*")]
        return tmp[0][1:].split(".zarr.tmp-")[0] if tmp else None

    def hidden() -> list[str]:
        return [p.name for folder in (feats, staging) for p in folder.iterdir() if p.name[0] == "."]

    # 1. kill -9 of the Snakemake process alone, mid-extraction: its group job stops by itself
    proc = start("run1.log")
    try:
        wait_for(extracting, "an extraction under way", proc=proc)
        cut = extracting()
        assert jobs_in(work)
        proc.kill()
        proc.wait()
        wait_for(lambda: not jobs_in(work), "the orphaned job to stop", timeout=60)
    finally:
        with_group_killed(proc)
    assert not (feats / f"{cut}.zarr").exists() and not (staging / f"{cut}.zarr").exists()
    assert not hidden()  # it cleaned up its temporary store
    assert any((work / ".snakemake" / "locks").iterdir())  # Snakemake's lock marks are left
    # the victims form a group of their own (the cohort's first group finished long ago)
    (group,) = [
        p.name[len("group-") : -len(".members")]
        for p in staging.glob("group-*.members")
        if p.read_text().split() == sorted(clean)
    ]
    log = work / "results" / "logs" / "extract_batch" / wf.ENCODER / f"group-{group}.log"
    assert re.fullmatch(
        r"ERROR: the Snakemake process \(pid \d+\) that started this job has ended; "
        r"no partial output was published\.",
        log.read_text().strip().splitlines()[-1],
    )

    # 2. the same command again, then SIGKILL of the whole process group after the group job has
    # written its summary but before Snakemake could record it (Snakemake is stopped meanwhile)
    summary = staging / f"group-{group}.json"
    proc = start("run2.log")
    try:
        wait_for(extracting, "an extraction under way", proc=proc)
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(summary.exists, "the group job's summary", timeout=120)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        with_group_killed(proc)
    assert "removed the locks a killed run left" in (tmp_path / "run2.log").read_text()
    assert any((work / ".snakemake" / "incomplete").iterdir())  # marked as incomplete
    staged = {sid: store_files(staging / f"{sid}.zarr") for sid in clean}  # both embedded
    assert not any((feats / f"{sid}.zarr").exists() for sid in clean)

    # 3. the same command once more finishes the run: the unrecorded group job is re-run, keeps the
    # stores it had finished (not re-embedded: same files, same mtimes) and they are moved into place
    rerun = wf.run_snakemake(work, "--cores", "1", *targets)
    text = rerun.stdout + rerun.stderr
    assert "removed the locks a killed run left" in text
    counts = job_counts(text)
    assert counts.get("extract_batch") == 1 and counts.get("extract") == len(clean), text
    for sid, features in clean.items():
        assert store_files(feats / f"{sid}.zarr") == staged[sid]
        np.testing.assert_array_equal(read_array(feats / f"{sid}.zarr", "features"), features)
    assert not hidden()
    assert not (work / ".snakemake" / "locks").exists() or not any(
        (work / ".snakemake" / "locks").iterdir()
    )
    dry = wf.run_snakemake(work, "-n", *targets)
    assert "Nothing to be done" in dry.stdout + dry.stderr


def store_files(store: Path) -> dict[str, int]:
    """Modification times of a store's files (the folder itself is moved into place)."""
    return {
        str(p.relative_to(store)): p.stat().st_mtime_ns
        for p in store.rglob("*")
        if p.is_file() and p.name != ".snakemake_timestamp"  # Snakemake's mark of a finished job
    }


def with_group_killed(proc: subprocess.Popen) -> None:
    """Whatever is left of the run's process group is killed (the test never leaves jobs behind)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait()
