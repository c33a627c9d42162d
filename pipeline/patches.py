"""Patches of one or several slides, decoded by DataLoader workers and gathered into model batches.

* an item is a chunk of patches (one IPC message per chunk, not per patch; chunks small enough that
  all workers fill the first batch together, which runs as soon as one chunk is ready);
* a worker opens each slide once, lazily, in its own process (never per item, never a handle shared
  across fork); :class:`CohortChunks` puts the chunks of many slides in one loader, so the workers
  decode the next slide while the model finishes the current one;
* workers decode with one thread each (torch and OpenCV) and the model gets the remaining cores of
  the job's budget, so decoding and inference do not oversubscribe the CPU.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.slides import PatchGeometry, open_slide, read_patch


class PatchChunks:
    """Patches of one slide in chunks: item ``i`` is uint8 [c, P, P, 3] for rows i*c … (i+1)*c-1.

    A chunk is the unit a decoding worker reads and sends (one message per chunk, not per patch);
    chunks smaller than a model batch let several workers fill one batch together.

    The slide is opened lazily by whichever process reads, once per process (the pid is checked, so
    a handle opened before a fork is never used in the child).
    """

    def __init__(
        self,
        slide_path: str | os.PathLike,
        coords: np.ndarray,
        geometry: PatchGeometry,
        chunk_size: int,
        reader: str = "auto",
    ) -> None:
        self.slide_path = Path(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64)
        self.geometry = geometry
        self.chunk_size = chunk_size
        self.reader = reader
        self._slide = None
        self._pid = None
        self.opens = 0  # per process: how often this process opened the slide (tests check 1)

    def __len__(self) -> int:
        return -(-len(self.coords) // self.chunk_size)

    def __getitem__(self, index: int):
        import torch

        if not 0 <= index < len(self):
            raise IndexError(index)
        slide = self._open()
        rows = self.coords[index * self.chunk_size : (index + 1) * self.chunk_size]
        size = self.geometry.patch_size
        out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
        try:
            for i, (x, y) in enumerate(rows):
                out[i] = read_patch(slide, int(x), int(y), self.geometry)
        except PipelineError as err:
            # Sent as a value: DataLoader would re-raise a worker's exception as a multi-line
            # RuntimeError; gather_batches raises it in the main process as the one-line error.
            return err
        return torch.from_numpy(out)

    def _open(self):
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path, self.reader)
            self._pid = os.getpid()
            self.opens += 1
        return self._slide

    def close(self) -> None:
        if self._slide is not None and self._pid == os.getpid():
            self._slide.close()
        self._slide = None

    def __getstate__(self) -> dict[str, Any]:  # spawn/forkserver workers: never pickle a handle
        state = dict(self.__dict__)
        state["_slide"] = None
        state["_pid"] = None
        return state


def chunk_size(batch_size: int, workers: int, largest: int = 16) -> int:
    """Patches per worker message: small enough that all workers share the first batch (so the model
    starts early), large enough that messages stay few; the whole batch when reading in-process."""
    if workers == 0:
        return batch_size
    return max(1, min(largest, -(-batch_size // workers), batch_size))


def gather_batches(chunks, batch_size: int, device) -> Iterator:
    """Model batches of exactly ``batch_size`` rows (the last may be shorter) from loader chunks,
    moved to ``device`` as they arrive; the first chunk goes alone so inference starts at once."""
    import torch

    parts, rows, first = [], 0, True
    for chunk in chunks:
        if isinstance(chunk, PipelineError):
            raise chunk
        parts.append(chunk.to(device, non_blocking=True))
        rows += len(parts[-1])
        if first:
            yield parts.pop()
            rows, first = 0, False
        while rows >= batch_size:
            joined = torch.cat(parts) if len(parts) > 1 else parts[0]
            yield joined[:batch_size]
            rest = joined[batch_size:]
            parts, rows = ([rest] if len(rest) else []), len(rest)
    if parts:
        yield torch.cat(parts) if len(parts) > 1 else parts[0]


def _decode_worker_init(worker_id: int, limit_opencv: bool = False) -> None:
    """Each decoding worker uses one thread: parallelism comes from the number of workers.

    Under ``fork`` OpenCV's limit is set in the parent instead (see :func:`make_loader`): its thread
    pool does not survive a fork, and ``cv2.setNumThreads`` in a child whose parent had used the pool
    deadlocks. Spawned/forkserver workers start clean and set it themselves.
    """
    import torch

    torch.set_num_threads(1)
    if limit_opencv:
        import cv2

        cv2.setNumThreads(1)


def thread_budget() -> int:
    """Cores this job may use: the CPU affinity, capped by OMP_NUM_THREADS when set (Snakemake sets
    it to the rule's ``threads``; SLURM's cgroup shows in the affinity)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        cores = min(cores or 1, int(env))
    return max(1, cores or 1)


def configure_threads(workers: int, device_type: str = "cpu") -> dict[str, int]:
    """Set the model's thread count from the job's cores; returns the settings for the record.

    On a GPU the host threads only feed the device, so the cores go to the decoding workers and the
    model keeps what is left. On the CPU the model *is* the work: decoding a patch costs a few per
    cent of a CNN's forward pass, and the workers wait on a bounded prefetch queue, so they use only
    what decoding needs. Leaving them a core each halved throughput on a 2-core machine
    (BENCHMARKS.md, cohort extraction); the model gets every core and the scheduler shares them.
    """
    import torch

    budget = thread_budget()
    model_threads = budget if device_type == "cpu" else max(1, budget - workers)
    torch.set_num_threads(model_threads)
    return {
        "cores": budget,
        "workers": workers,
        "model_threads": model_threads,
        "worker_threads": 1,
    }


def make_loader(dataset: PatchChunks, workers: int, pin_memory: bool):
    """A DataLoader over whole batches; with workers, OpenCV is limited to one thread first so that
    forked workers inherit the limit (decoding processes must not each start a pool of threads)."""
    import functools
    import multiprocessing

    from torch.utils.data import DataLoader

    forked = multiprocessing.get_start_method() == "fork"
    if workers and forked:
        import cv2

        cv2.setNumThreads(1)
    init = functools.partial(_decode_worker_init, limit_opencv=not forked)
    return DataLoader(
        dataset,
        batch_size=None,  # items are already chunks of patches
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=init if workers else None,
        prefetch_factor=4 if workers else None,
    )


class CohortChunks:
    """The chunks of several slides in one sequence (slide after slide), for one DataLoader.

    Workers keep running across slide boundaries, so the next slide's patches are decoded while the
    model finishes the current one. A worker keeps one slide open at a time and closes it when its
    chunks move on to the next slide.
    """

    def __init__(self, slides: list[PatchChunks]) -> None:
        self.slides = slides
        self.starts = np.cumsum([0] + [len(s) for s in slides]).tolist()
        self._current = None

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int):
        k = bisect.bisect_right(self.starts, index) - 1
        if not 0 <= index < len(self) or k >= len(self.slides):
            raise IndexError(index)
        if self._current is not None and self._current != k:
            self.slides[self._current].close()
        self._current = k
        return self.slides[k][index - self.starts[k]]

    def close(self) -> None:
        for s in self.slides:
            s.close()
