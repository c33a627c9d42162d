"""A full disk (or any other OS-level I/O failure) is the one-line error naming the file, never a
traceback; nothing half-written is published; a bad weights file is one line that never suggests
loading it with ``weights_only=False``."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import FileSystemError, io_error

SLIDE = Path(__file__).resolve().parents[1] / "data" / "slides" / "CMU-1-Small-Region.svs"
FULL = (
    r"No space left on device \(ENOSPC; (?P<free>[\d.]+ (B|KiB|MiB|GiB)) free there\)\. The disk is "
    r"full: free space there \(df -h\) or write the results elsewhere, then re-run\."
)
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def full_disk_line(line: str, where: Path | str) -> float:
    """The free bytes a full-disk line for ``where`` reports (the test fails on any other line)."""
    match = re.fullmatch(rf"ERROR {re.escape(str(where))}: {FULL}", line)
    assert match, line
    number, unit = match["free"].split()
    return float(number) * UNITS[unit]


@pytest.fixture(autouse=True, scope="module")
def _logging_outside_capsys():
    """The CLI's log handler keeps the stderr it was made with: make it before capsys swaps stderr,
    as other test modules expect (their capsys sees only the CLI's own lines)."""
    from pipeline.log import setup_logging

    setup_logging()


def _run(capsys, *argv) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.splitlines()
    return code, [line for line in err if line.startswith("ERROR")]  # a traceback fails in-process


def _leftovers(*folders: Path) -> list[str]:
    return sorted(p.name for d in folders if d.exists() for p in d.iterdir())


def test_tile_on_a_full_disk_is_one_line_naming_the_file(capsys, tmp_path, monkeypatch):
    """``write()`` on an open file raises ENOSPC without a file name: the line names the output."""

    def full_disk(self, data):
        with open(self, "wb") as handle:
            handle.write(data[:16])  # part of it reached the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    out, qc = tmp_path / "tiles" / "s.zarr", tmp_path / "qc" / "s.png"
    code, lines = _run(capsys, "tile", SLIDE, "-o", out, "--qc", qc)
    assert code == 1 and len(lines) == 1
    free = shutil.disk_usage(tmp_path).free  # the line says what is free on that disk
    assert abs(full_disk_line(lines[0], qc) - free) <= max(0.001 * free, 2**20)
    assert _leftovers(out.parent, qc.parent) == []  # no store, no picture, no temporary


def test_an_os_error_naming_its_file_keeps_that_name():
    err = OSError(errno.EACCES, os.strerror(errno.EACCES), "/data/slides/a.svs")
    assert io_error(err, "/results/tiles/a.zarr").line() == (
        "ERROR /data/slides/a.svs: Permission denied (EACCES). You may not write or read there: "
        "check the permissions, or use another folder."
    )
    assert isinstance(io_error(err), FileSystemError)
    # a chunk inside a store's hidden temporary: the line names the store the user asked for
    chunk = OSError(
        errno.ENOSPC, os.strerror(errno.ENOSPC), "/r/f/.s1.zarr.tmp-42-0a1b2c3d/features/c/0"
    )
    full_disk_line(io_error(chunk).line(), "/r/f/s1.zarr")


def _tmpfs_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _tmpfs_available(), reason="needs unprivileged user+mount namespaces")
def test_tile_on_a_real_full_tmpfs(tmp_path):
    """The same on a real 12 KiB tmpfs (mounted in a user namespace), through the installed command."""
    disk = tmp_path / "disk"
    disk.mkdir()
    out, qc = disk / "tiles" / "s.zarr", disk / "qc" / "s.png"
    script = (
        f"mount -t tmpfs -o size=12k tmpfs {disk} && "
        f"{sys.executable} -m pipeline tile {SLIDE} -o {out} --qc {qc}; "
        f"echo rc=$?; find {disk} -type f"
    )
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if not line[:2].isdigit()]  # not logs
    assert len(errors) == 1 and full_disk_line(errors[0], qc) <= 12 * 2**10
    assert proc.stdout.split() == ["rc=1"]  # exit status 1, no file published or left behind


def test_random_bytes_as_weights_never_suggest_unsafe_loading(tmp_path):
    """PyTorch's message advises ``weights_only=False`` (runs the file's code); ours never does."""
    torch = pytest.importorskip("torch")
    from pipeline.errors import PipelineError
    from pipeline.weights import read_state_dict

    bad = tmp_path / "weights.pth"
    bad.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(PipelineError) as caught:
        read_state_dict([bad])
    line = caught.value.line()
    assert line.startswith(f"ERROR {bad}: cannot read weights (not a PyTorch tensor file: ")
    assert "weights_only=False" not in line and "False" not in line and "\n" not in line

    objects = tmp_path / "objects.pt"
    torch.save({"layer": torch.zeros(2), "path": Path("x")}, objects)  # a pickle with a class
    with pytest.raises(PipelineError) as caught:
        read_state_dict([objects])
    assert caught.value.line() == (
        f"ERROR {objects}: cannot read weights (it holds Python objects, not only tensors: "
        "pathlib.PosixPath). Check that the file is complete; .bin/.pth files must hold plain "
        "tensors (they are loaded with weights_only=True)."
    )


def test_first_line_of_an_exception():
    """One helper for every one-line error built from a library's exception."""
    from pipeline.errors import first_line

    assert first_line(ValueError("  bad value\nadvice paragraph\n")) == "bad value"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("x" * 500)) == "x" * 200
    assert first_line(RuntimeError("x" * 500), 300) == "x" * 300


@pytest.mark.skipif(not _tmpfs_available(), reason="needs unprivileged user+mount namespaces")
@pytest.mark.parametrize("size_kib", [8, 40])
def test_training_on_a_real_full_tmpfs_is_one_line_and_no_fold_looks_done(tmp_path, size_kib):
    """`wsi-mil cv` writing to a tiny tmpfs: one line naming the file and the free space, exit 1; a
    fold that looks done is complete and the fold that ran out does not look done (each size runs
    out at another file of the run)."""
    import numpy as np

    from pipeline.layout import FOLD_FILES
    from pipeline.store import write_store

    rng = np.random.default_rng(0)
    features, rows = tmp_path / "features", ["slide_id,case_id,label"]
    for i in range(8):
        x = rng.normal(size=(6, 8)) + (2.0 if i % 2 else 0.0)
        coords = np.stack([np.arange(6) * 256, np.zeros(6)], axis=1).astype(np.int32)
        write_store(
            features / f"s{i}.zarr", {"features": x.astype(np.float16), "coords": coords}, {}
        )
        rows.append(f"s{i},c{i},{['normal', 'tumor'][i % 2]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        f"mount -t tmpfs -o size={size_kib}k tmpfs {disk} && {sys.executable} -m pipeline cv "
        f"--features {features} --labels {tmp_path / 'labels.csv'} --method meanpool --folds 2 "
        f"-o {disk / 'cv'} epochs=2 selection=holdout; echo rc=$?; "
        f"find {disk} -type f"
    )
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, proc.stderr[-2000:]
    where = errors[0][len("ERROR ") :].split(": No space left")[0]
    assert where.startswith(str(disk / "cv")) and ".tmp-" not in where
    assert full_disk_line(errors[0], where) <= size_kib * 2**10
    rc, *files = proc.stdout.split()
    assert rc == "rc=1" and not [f for f in files if ".tmp-" in f]  # no temporary left
    for metrics in (Path(f) for f in files if f.endswith("/metrics.json")):
        names = {Path(f).name for f in files if Path(f).parent == metrics.parent}
        assert names >= set(FOLD_FILES.values())  # a fold that looks done is complete
    assert str(Path(where).parent / "metrics.json") not in files  # the one that failed is not
