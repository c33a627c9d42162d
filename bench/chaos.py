"""Random hard kills of the whole workflow, each resumed with the same command, compared with a clean run.

A user on a cluster meets ``kill -9`` at random moments (preemption, the OOM killer, a closed
terminal). This script measures what the README promises: running the same command again is the whole
recovery, and the results are those of a run that was never interrupted.

1. A clean run of a demo-shaped workflow on a small synthetic cohort (tiling, features with the
   offline ``efficientnet_lite0``, 2 methods (AB-MIL, MHIM) x 2 folds of the classification task,
   report; heatmaps off, as they cost most of a run and are tested on their own); its wall time is T.
2. Rounds: from an empty results folder, the same command is started; each run is killed (SIGKILL of
   its whole process group: Snakemake and every job) at a moment drawn uniformly from [0, T) after its
   start (seeded); the command is started again, until one run finishes by itself. Then every output
   is compared with the clean run's, and the next round starts from scratch, until K kills are spent.
3. Compared outputs: tile stores (``coords`` + attributes), feature stores (``features``, ``coords``
   + attributes), every fold's ``predictions.csv`` and ``model.pt`` tensors, and ``summary.csv``. Bit-identical is required (``--atol`` allows a float tolerance on feature values,
   0 by default); only attributes and columns that record *when* or *how fast* (seconds, dates,
   memory, the results folder's absolute path) are left out, listed in ``VOLATILE_ATTRS`` and ``VOLATILE_COLUMNS``.

A kill is *survived* when the runs after it needed nothing but the same command (no run ended with an
error) and its round's outputs all matched. The last line is ``K kills, S survived, D outputs differ``.

    python bench/chaos.py --kills 20 --work /tmp/chaos      # the benchmark (BENCHMARKS.md, issue 25)

tests/workflow/test_faults.py runs the small version: ``run_rounds`` with 2 kills on a copy of the
tests' shared workflow run, compared with ``differences``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# attributes and columns that say when or how fast, or where the results folder is: never results
VOLATILE_ATTRS = {"extraction", "group_summary", "tiles_store", "seconds", "created"}
VOLATILE_COLUMNS = ("seconds", "per_second", "memory", "peak", "time_s", "_s_")


def cohort_helpers():
    """tests/workflow/cohort.py: the tiny cohort, its config and the Snakemake command of the tests."""
    spec = importlib.util.spec_from_file_location("chaos_cohort", REPO / "tests/workflow/cohort.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(base: Path, workdir: Path, wf) -> Path:
    """A work folder with the config of the tiny cohort (8 slides, both tasks, AB-MIL + MHIM, 2
    folds); the cohort is shared by every work folder under ``base``."""
    from pipeline.synth import make_cohort

    cohort = base / "cohort"
    make_cohort(cohort, wf.N_SLIDES, seed=0, size_scale=0.4, tumor_fraction_range=(0.3, 0.5))
    config = wf.workflow_config(cohort, heatmaps={"enabled": False})
    config["tasks"] = config["tasks"][:1]  # the classification task (what the demo trains first)
    config["mil"]["epochs"] = 8  # enough for non-trivial models; keeps one run short
    wf.write_config(workdir, config)
    return workdir


def command(wf, workdir: Path, cores: int) -> list[str]:
    """The README's one command (``snakemake --cores N --configfile ...``) for ``workdir``."""
    return wf.snakemake_cmd(workdir, "--cores", str(cores), "--configfile", "config.yaml", *wf.FAST)


def start(wf, cmd: list[str], workdir: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, cwd=workdir, env=wf.snakemake_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is still alive (not a zombie)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to Snakemake and every job it started (they share its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 30
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def run_once(wf, cmd, workdir: Path, log: Path, kill_after: float | None) -> tuple[bool, int]:
    """One run of the command; killed after ``kill_after`` s unless it ends first: (killed, rc)."""
    proc = start(wf, cmd, workdir, log)
    try:
        proc.wait(timeout=kill_after)
        return False, proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return True, -9
    finally:
        if proc.poll() is None:
            kill_group(proc)


def last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    picked = [line for line in lines if "ERROR" in line or "Error" in line or "Exception" in line]
    return (picked or lines or ["(no output)"])[-1].strip()


def chaos_round(wf, cmd, workdir: Path, log: Path, moments, budget: int, max_errors: int = 3):
    """Kill-and-resume until a run finishes by itself (or ``budget`` kills are spent and the last run
    is left to finish): ``(kills, errors)``, ``errors`` the first line of each run that failed."""
    kills, errors = 0, []
    while True:
        kill_after = next(moments) if kills < budget else None
        with open(log, "a") as out:
            out.write(f"\n=== run (kill after {kill_after}) ===\n")
        killed, rc = run_once(wf, cmd, workdir, log, kill_after)
        if killed:
            kills += 1
            continue
        if rc == 0:
            return kills, errors
        errors.append(last_error(log))
        if len(errors) >= max_errors:
            return kills, errors


# --- comparing outputs -----------------------------------------------------------------------------
def outputs(results: Path) -> list[str]:
    """The outputs compared, relative to the results folder (sorted)."""
    found = [*results.glob("tiles/*.zarr"), *results.glob("features/*/*.zarr")]
    found += [*results.glob("mil/**/predictions.csv"), *results.glob("mil/**/model.pt")]
    found += list(results.glob("summary.csv"))  # the run's table of every method
    return sorted({str(p.relative_to(results)) for p in found})


def _attrs(store: Path) -> dict:
    from pipeline.store import read_attrs

    return {k: v for k, v in read_attrs(store).items() if k not in VOLATILE_ATTRS}


def _store_differs(a: Path, b: Path, atol: float) -> str | None:
    from pipeline.store import open_store

    ga, gb = open_store(a), open_store(b)
    names = sorted(ga.array_keys())
    if names != sorted(gb.array_keys()):
        return f"arrays {names} vs {sorted(gb.array_keys())}"
    for name in names:
        x, y = np.asarray(ga[name][...]), np.asarray(gb[name][...])
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{name} {x.shape} {x.dtype} vs {y.shape} {y.dtype}"
        if x.tobytes() != y.tobytes():
            diff = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
            if name != "features" or diff > atol:
                return f"{name} differs (max |diff| {diff:g})"
    da, db = _attrs(a), _attrs(b)
    keys = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    return f"attributes {keys} differ" if keys else None


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [
            {k: v for k, v in row.items() if not any(t in k for t in VOLATILE_COLUMNS)}
            for row in csv.DictReader(handle)
        ]


def _tensors_differ(a: Path, b: Path) -> str | None:
    from pipeline.checkpoints import load_tensors

    sa, sb = load_tensors(a, "model weights", ""), load_tensors(b, "model weights", "")
    if sorted(sa) != sorted(sb):
        return "other tensors"
    bad = [k for k in sa if sa[k].numpy().tobytes() != sb[k].numpy().tobytes()]
    return f"tensors {bad[:3]} differ" if bad else None


def differences(clean: Path, other: Path, atol: float = 0.0) -> dict[str, str]:
    """``{output: why}`` for every output of ``clean`` that ``other`` lacks or holds otherwise."""
    out = {}
    theirs = set(outputs(other))
    for rel in outputs(clean):
        a, b = clean / rel, other / rel
        if rel not in theirs:
            out[rel] = "missing"
        elif rel.endswith(".zarr"):
            why = _store_differs(a, b, atol)
            if why:
                out[rel] = why
        elif rel.endswith(".pt"):
            why = _tensors_differ(a, b)
            if why:
                out[rel] = why
        elif _csv_rows(a) != _csv_rows(b):
            out[rel] = "rows differ"
    for rel in sorted(theirs - set(outputs(clean))):
        out[rel] = "not in the clean run"
    return out


def run_rounds(wf, cmd, workdir, clean, kills, moments, reset, logs, atol=0.0, on_row=None):
    """Rounds of kill-and-resume (each from ``reset()``) until ``kills`` kills are spent, every
    round's outputs compared with ``clean``: ``(kills, survived, outputs that differ, rows)``;
    ``on_row(row)`` is called as each round ends."""
    done = survived = differ = 0
    rows = []
    while done < kills:
        reset()
        log = Path(logs) / f"round{len(rows) + 1}.log"
        log.unlink(missing_ok=True)
        t0 = time.monotonic()
        n, errors = chaos_round(wf, cmd, workdir, log, moments, kills - done)
        seconds = time.monotonic() - t0
        diff = differences(clean, workdir / "results", atol)
        if errors and not diff:  # the round did not finish: its outputs cannot all match
            diff = {"(round)": "did not finish"}
        done += n
        differ += len(diff)
        survived += n if not errors and not diff else 0
        rows.append({"round": len(rows) + 1, "kills": n, "errors": errors, "differ": diff,
                     "seconds": round(seconds, 1)})  # fmt: skip
        if on_row is not None:
            on_row(rows[-1])
        print(
            f"round {len(rows)}: {n} kills, {len(errors)} failed resumes, {len(diff)} outputs "
            f"differ, {seconds:.0f} s" + "".join(f"\n  {k}: {v}" for k, v in diff.items())
            + "".join(f"\n  resume failed: {e}" for e in errors),
            flush=True,
        )  # fmt: skip
    return done, survived, differ, rows


def stages_at_kills(logs: Path) -> dict[str, int]:
    """{jobs running at the kill: count} over the round logs (every run of a round but its last was
    killed): where the kills landed."""
    import collections
    import re

    found: collections.Counter = collections.Counter()
    for log in Path(logs).glob("round*.log"):
        parts = re.split(r"\n=== run \(kill after [^)]*\) ===\n", log.read_text(errors="replace"))
        for body in parts[1:-1]:
            started = {}
            for m in re.finditer(r"(?:local)?rule (\w+):\n((?:    .*\n)+)", body):
                job = re.search(r"jobid: (\d+)", m.group(2))
                if job:
                    started[job.group(1)] = m.group(1)
            finished = set(re.findall(r"Finished jobid: (\d+)", body))
            running = sorted({rule for job, rule in started.items() if job not in finished})
            found["+".join(running) or "start-up (parsing, DAG)"] += 1
    return dict(found.most_common())


def kill_moments(seed: int, window: tuple[float, float]):
    rng = random.Random(seed)
    while True:
        yield rng.uniform(*window)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="K, the number of kill -9 (20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (0)")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores (2)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (reused)")
    parser.add_argument("--atol", type=float, default=0.0, help="tolerance on feature values (0)")
    parser.add_argument("--rows", type=Path, help="append one JSON row per round here")
    args = parser.parse_args(argv)

    wf = cohort_helpers()
    base = args.work.resolve()
    clean_dir = prepare(base, base / "clean", wf)
    chaos_dir = prepare(base, base / "chaos", wf)
    marker = clean_dir / "clean.seconds"
    if not marker.exists():  # the clean run is reused between invocations
        shutil.rmtree(clean_dir / "results", ignore_errors=True)
        t0 = time.monotonic()
        _, rc = run_once(
            wf, command(wf, clean_dir, args.cores), clean_dir, base / "clean.log", None
        )
        if rc != 0:
            print(f"the clean run failed ({rc}): {last_error(base / 'clean.log')}", file=sys.stderr)
            return 2
        marker.write_text(f"{time.monotonic() - t0:.1f}\n")
    wall = float(marker.read_text())
    print(
        f"clean run: {wall:.0f} s; kills uniform over [0, {wall:.0f}) s after each start",
        flush=True,
    )

    def reset() -> None:  # each round starts from nothing
        shutil.rmtree(chaos_dir / "results", ignore_errors=True)
        shutil.rmtree(chaos_dir / ".snakemake", ignore_errors=True)

    def record(row: dict) -> None:
        if args.rows:
            with open(args.rows, "a") as handle:
                handle.write(json.dumps({"seed": args.seed, "cores": args.cores, **row}) + "\n")

    moments = kill_moments(args.seed, (0.0, wall))
    kills, survived, differ, _ = run_rounds(
        wf, command(wf, chaos_dir, args.cores), chaos_dir, clean_dir / "results", args.kills,
        moments, reset, base, args.atol, record,
    )  # fmt: skip
    print(f"jobs running at the kills: {stages_at_kills(base)}")
    print(f"{kills} kills, {survived} survived, {differ} outputs differ")
    return 0 if survived == kills and differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
