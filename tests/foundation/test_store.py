"""Atomic publishing: an interrupted write never leaves an output that looks complete."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.store import StoreWriter, atomic_path, read_array, read_attrs, write_store


def no_temp_siblings(directory):
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name] == []


def test_write_store_round_trip(tmp_path):
    coords = np.arange(20, dtype=np.int32).reshape(10, 2)
    out = write_store(
        tmp_path / "s.zarr", {"coords": coords}, {"slide_mpp": np.float64(0.25), "n": np.int64(10)}
    )
    assert np.array_equal(read_array(out, "coords"), coords)
    assert read_array(out, "coords").dtype == np.int32
    attrs = read_attrs(out)
    chunk = out / "coords" / "c" / "0" / "0"
    assert attrs.pop("chunk_bytes") == {"coords/c/0/0": chunk.stat().st_size}
    assert attrs == {"slide_mpp": 0.25, "n": 10}
    assert no_temp_siblings(tmp_path)


@pytest.mark.parametrize("harm", ["truncate", "delete", "grow"])
def test_a_damaged_chunk_is_one_line_never_zeros(tmp_path, harm):
    """Zarr reads a missing chunk as zeros: the sizes recorded at publication tell it is damaged."""
    feats = np.arange(1, 41, dtype=np.float16).reshape(10, 4)
    out = write_store(tmp_path / "s.zarr", {"features": feats}, {})
    chunk = out / "features" / "c" / "0" / "0"
    size = chunk.stat().st_size
    if harm == "delete":
        chunk.unlink()
        cause = "its chunk features/c/0/0 is missing"
    else:
        new = size // 2 if harm == "truncate" else size + 3
        with open(chunk, "r+b") as handle:
            handle.truncate(new)
        cause = f"its chunk features/c/0/0 has {new} bytes, {size} were written"
    with pytest.raises(PipelineError) as err:
        read_array(out, "features")
    assert err.value.line() == (
        f"ERROR {out}: is damaged: {cause}. Delete it and re-run the stage that writes it."
    )


def test_empty_arrays_are_valid(tmp_path):
    out = write_store(tmp_path / "e.zarr", {"coords": np.zeros((0, 2), np.int32)}, {})
    assert read_array(out, "coords").shape == (0, 2)


def test_failure_leaves_nothing_and_keeps_old_output(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists() and no_temp_siblings(tmp_path)

    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new but incomplete")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and no_temp_siblings(tmp_path)


def test_store_writer_publishes_only_on_success(tmp_path):
    target = tmp_path / "f.zarr"
    with pytest.raises(RuntimeError):
        with StoreWriter(target, {"features": ((6, 3), "float16")}) as writer:
            writer.write("features", 0, np.ones((3, 3), np.float16))
            raise RuntimeError("worker died")
    assert not target.exists() and no_temp_siblings(tmp_path)

    with StoreWriter(target, {"features": ((6, 3), "float16")}) as writer:
        writer.write("features", 0, np.ones((3, 3), np.float16))
        writer.write("features", 3, np.full((3, 3), 2, np.float16))
        writer.close({"encoder": "x"})
    feats = read_array(target, "features")
    assert feats.dtype == np.float16 and feats[:3].sum() == 9 and feats[3:].sum() == 18
    assert read_attrs(target)["encoder"] == "x"


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    """A writer killed with SIGKILL leaves a hidden temporary; the next write of that output removes it."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from pipeline.store import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('partial')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    target = tmp_path / "out.txt"
    subprocess.run([sys.executable, "-c", code, str(target)], check=False)
    assert not target.exists()
    assert len(list(tmp_path.glob(".out.txt.tmp-*"))) == 1

    with atomic_path(target) as tmp:
        tmp.write_text("complete")
    assert target.read_text() == "complete" and no_temp_siblings(tmp_path)


def test_sigterm_during_a_command_publishes_nothing(tmp_path):
    """Snakemake and SLURM stop jobs with SIGTERM: the CLI must clean its temporary output."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys, time\n"
        "from pipeline import cli\n"
        "from pipeline.store import atomic_path\n"
        "def slow(args):\n"
        "    with atomic_path(sys.argv[1]) as tmp:\n"
        "        tmp.write_text('partial'); print('writing', flush=True); time.sleep(30)\n"
        "import argparse\n"
        "class Parser:  # a command whose run() is slow, through the real cli.main\n"
        "    def parse_args(self, argv):\n"
        "        return argparse.Namespace(_run=slow, verbose=False)\n"
        "cli.build_parser = Parser\n"
        "sys.exit(cli.main([]))\n"
    )
    target = tmp_path / "out.txt"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    time.sleep(0.1)
    assert proc.returncode == 143
    assert "terminated (SIGTERM)" in err
    assert not target.exists() and no_temp_siblings(tmp_path)


class _FullDisk:
    """A zarr array whose writes fail as on a full disk (zarr's own write() names no file)."""

    def __setitem__(self, key, value):
        import errno
        import os

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_background_write_never_publishes_its_store(tmp_path):
    """Feature extraction queues a store's chunk writes and then its publication on one writer
    thread: once a chunk write fails, the publication must not run (zarr would read the missing
    chunk as zeros), and the temporary store is removed."""
    from pipeline.errors import io_error
    from pipeline.store import WriteQueue

    out = tmp_path / "s.zarr"
    writer = StoreWriter(out, {"features": ((8, 4), np.float16)}, chunk_rows=4)
    queue = WriteQueue()
    queue.submit(writer.write, "features", 0, np.ones((4, 4), np.float16))
    queue.settle()
    writer.arrays["features"] = _FullDisk()
    queue.submit(writer.write, "features", 4, np.ones((4, 4), np.float16))
    queue.submit(writer.publish, {"n_patches": 8})
    with pytest.raises(OSError) as err:
        queue.drain()
    queue.close()
    assert not out.exists() and no_temp_siblings(tmp_path)
    assert io_error(err.value).where == str(out)  # the line names the store, not its temporary


def test_a_store_missing_a_chunk_is_never_published(tmp_path):
    out = tmp_path / "s.zarr"
    writer = StoreWriter(out, {"features": ((8, 4), np.float16)}, chunk_rows=4)
    writer.write("features", 0, np.ones((4, 4), np.float16))  # rows 4-7 never written
    with pytest.raises(RuntimeError, match="1 of the 2 chunks of 'features' were written"):
        writer.publish({})
    assert not out.exists() and no_temp_siblings(tmp_path)


def test_a_chunk_of_zeros_is_written_so_none_is_missing(tmp_path):
    out = write_store(tmp_path / "z.zarr", {"features": np.zeros((6, 4), np.float16)}, {})
    assert list(read_attrs(out)["chunk_bytes"]) == ["features/c/0/0"]
    assert read_array(out, "features").sum() == 0


def test_temporaries_of_dead_writers_are_removed_from_a_folder(tmp_path):
    """A job killed while writing leaves a hidden temporary; when its store is later published by
    another route (a staged store moved into place) nothing writes that path again to remove it."""
    import subprocess

    from pipeline.store import remove_stale_temporaries_in

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".a.zarr.tmp-{dead.pid}-0a1b2c3d"
    live = tmp_path / f".b.zarr.tmp-{os.getpid()}-0a1b2c3d"  # this process: still writing it
    for folder in (stale, live):
        (folder / "features").mkdir(parents=True)
    (tmp_path / "a.zarr").mkdir()
    assert remove_stale_temporaries_in(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.zarr", live.name])
