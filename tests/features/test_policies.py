"""The small shared pieces extraction is built on: the one precision rule, the bounded write queue,
and the patch geometry read back from a tile store."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from pipeline.device import PRECISIONS, resolve_precision, shard_devices
from pipeline.errors import PipelineError
from pipeline.slides import PatchGeometry
from pipeline.store import ChunkedRows, StoreWriter, WriteQueue, read_array, read_attrs

CPU = torch.device("cpu")


def test_one_precision_rule_for_extraction_and_mil():
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    # extraction: an encoder preferring bf16 stays fp32 on CPU; explicit names are kept
    assert resolve_precision("auto", CPU, "bf16") == "fp32"
    assert resolve_precision("fp16", CPU, "bf16") == "fp16"
    # MIL: fp32 preferred (small projection) is fp32 everywhere; fp16 is not a MIL precision
    mil = ("auto", "fp32", "bf16")
    assert resolve_precision("auto", CPU, "fp32", "mil.precision", mil, cpu_autocast=True) == "fp32"
    with pytest.raises(PipelineError, match="mil.precision.*unknown precision 'fp16'"):
        resolve_precision("fp16", CPU, "bf16", "mil.precision", mil)
    with pytest.raises(PipelineError, match="unknown precision 'half'"):
        resolve_precision("half", CPU, "bf16")
    assert shard_devices("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]


def test_write_queue_keeps_order_and_bounds_what_waits(tmp_path):
    started, release = [], threading.Event()

    def slow_write(i):
        started.append(i)
        release.wait(5)

    queue = WriteQueue(max_pending=2)
    queue.submit(slow_write, 0)
    queue.submit(slow_write, 1)
    blocked = threading.Thread(target=queue.submit, args=(slow_write, 2))
    blocked.start()
    time.sleep(0.2)
    assert blocked.is_alive()  # a third write waits until one of the two has run
    release.set()
    blocked.join(5)
    queue.drain()
    queue.close()
    assert started == [0, 1, 2]


def test_chunked_rows_through_the_queue_write_whole_chunks_in_order(tmp_path):
    rows = np.arange(25 * 3, dtype=np.float32).reshape(25, 3)
    writer = StoreWriter(tmp_path / "s.zarr", {"x": ((25, 3), np.float32)}, chunk_rows=8)
    queue = WriteQueue()
    chunked = ChunkedRows(writer, "x", 8, queue)
    for start in range(0, 25, 3):  # batches of 3 rows, chunks of 8
        chunked.add(rows[start : start + 3])
    chunked.flush()
    queue.submit(writer.publish, {"n": 25})
    queue.drain()
    queue.close()
    np.testing.assert_array_equal(read_array(tmp_path / "s.zarr", "x"), rows)
    assert read_attrs(tmp_path / "s.zarr")["n"] == 25


def test_patch_geometry_round_trips_through_attrs():
    geometry = PatchGeometry(0.2527, 0.5, 256, 512, 1, 256)
    assert PatchGeometry.from_attrs({**geometry.as_attrs(), "other": 1}) == geometry
    attrs = geometry.as_attrs()
    del attrs["read_size"]
    with pytest.raises(PipelineError, match=r"lacks the patch geometry \(read_size\)"):
        PatchGeometry.from_attrs(attrs, "t.zarr")
