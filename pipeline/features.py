"""Patch features of one slide: read the tiles' patches, encode them in batches, write a zarr store.

The data path is built so the model, not reading, is the bottleneck:

* a Dataset whose item is a chunk of patches (one IPC message per chunk, not per patch; chunks small
  enough that all workers fill the first batch together, which runs as soon as one chunk is ready);
  each DataLoader worker opens the slide once, lazily, in its own process (never per item, never a
  handle shared across fork);
* workers decode with one thread each (torch and OpenCV), and the model gets the remaining cores of
  the job's budget, so decoding and inference do not oversubscribe the CPU — the failure mode that
  makes CLAM's CPU path spend most of its time in transforms;
* patches cross to the model as uint8 (4× less than float), pinned on CUDA, and are resized and
  normalised there as one batched tensor op; CUDA runs under autocast (bf16 by default) with
  channels_last, and results are copied back one batch late so the GPU never waits for the host;
* features are appended chunk by chunk to a :class:`~pipeline.store.StoreWriter`, so memory is bounded
  and the store is published atomically only when complete.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import pipeline
from pipeline.device import autocast_context, resolve_device
from pipeline.errors import PipelineError
from pipeline.log import get_logger
from pipeline.slides import PatchGeometry, open_slide, read_patch, slide_id
from pipeline.store import StoreWriter, open_store, write_store

GEOMETRY_KEYS = (
    "slide_mpp",
    "target_mpp",
    "patch_size",
    "level0_patch_size",
    "read_level",
    "read_size",
)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ExtractOptions:
    """How to run an extraction (``features`` section of the config; CLI flags override)."""

    batch_size: int = 64
    workers: int = 4
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "float16"

    @classmethod
    def from_config(cls, section: dict[str, Any], **overrides: Any) -> ExtractOptions:
        values = {k: section[k] for k in asdict(cls()) if k in section}
        values.update({k: v for k, v in overrides.items() if v is not None})
        options = cls(**values)
        if options.batch_size < 1 or options.workers < 0:
            raise PipelineError(
                "features", "batch size must be ≥ 1 and workers ≥ 0", "Fix --batch-size/--workers."
            )
        if options.precision not in PRECISIONS or options.dtype not in DTYPES:
            raise PipelineError(
                "features",
                f"precision '{options.precision}' / dtype '{options.dtype}' not supported",
                f"Use precision {'|'.join(PRECISIONS)} and dtype {'|'.join(DTYPES)}.",
            )
        return options


# --- tile stores ---------------------------------------------------------------------------------


@dataclass
class Tiles:
    """A tile store: coordinates in order, the geometry they were cut with and all its attrs."""

    path: Path
    coords: np.ndarray  # int32 [N, 2], level-0 top-left (x, y)
    attrs: dict[str, Any]

    @property
    def failed(self) -> bool:
        return bool(self.attrs.get("failed"))

    def geometry(self) -> PatchGeometry:
        missing = [k for k in GEOMETRY_KEYS if k not in self.attrs]
        if missing:
            raise PipelineError(
                self.path,
                f"tile store lacks the patch geometry ({', '.join(missing)})",
                "Re-run `wsi-mil tile` for this slide.",
            )
        a = self.attrs
        return PatchGeometry(
            float(a["slide_mpp"]),
            float(a["target_mpp"]),
            int(a["patch_size"]),
            int(a["level0_patch_size"]),
            int(a["read_level"]),
            int(a["read_size"]),
        )


def read_tiles(path: str | os.PathLike) -> Tiles:
    group = open_store(path)
    attrs = dict(group.attrs)
    if "coords" not in group:
        raise PipelineError(path, "tile store has no 'coords' array", "Re-run `wsi-mil tile`.")
    coords = np.asarray(group["coords"][...], dtype=np.int32).reshape(-1, 2)
    return Tiles(Path(path), coords, attrs)


def check_tiles_match(slide, tiles: Tiles) -> None:
    """Refuse a tile store cut from another slide (different size, or patches off the slide)."""
    size = tiles.attrs.get("slide_size")
    if size is not None and tuple(map(int, size)) != tuple(slide.dimensions):
        raise PipelineError(
            tiles.path,
            f"tile store was made from a slide of size {list(size)}, but {slide.path} is "
            f"{list(slide.dimensions)}",
            "Pass the tile store of this slide, or re-run `wsi-mil tile`.",
        )
    width, height = slide.dimensions
    x, y = tiles.coords[:, 0], tiles.coords[:, 1]
    if len(x) and (x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height):
        raise PipelineError(
            tiles.path,
            f"patch coordinates fall outside {slide.path} ({width}×{height})",
            "Pass the tile store of this slide, or re-run `wsi-mil tile`.",
        )
    if tiles.geometry().read_level >= slide.level_count:
        raise PipelineError(
            tiles.path,
            f"tile store reads level {tiles.geometry().read_level}, {slide.path} has "
            f"{slide.level_count}",
            "Re-run `wsi-mil tile` for this slide.",
        )


# --- data loading --------------------------------------------------------------------------------


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


def configure_threads(workers: int) -> dict[str, int]:
    """Give the model the cores the decoding workers do not use; returns the settings for the record."""
    import torch

    budget = thread_budget()
    model_threads = max(1, budget - workers)
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


# --- device and precision ------------------------------------------------------------------------


def resolve_precision(name: str, device, preferred: str) -> str:
    """``auto`` → the encoder's preferred autocast dtype on CUDA (fp16 if bf16 is unsupported),
    fp32 on CPU (CPU autocast is rarely faster and changes results)."""
    import torch

    if name != "auto":
        return name
    if device.type != "cuda":
        return "fp32"
    if preferred == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return preferred


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


# --- progress ------------------------------------------------------------------------------------


class Progress:
    """Patches/s and ETA: a tqdm bar on a terminal, a log line every ``every_s`` seconds otherwise."""

    def __init__(self, total: int, log, every_s: float = 15.0) -> None:
        from tqdm import tqdm

        self.total = total
        self.done = 0
        self.log = log
        self.every_s = every_s
        self.start = self.last = time.perf_counter()
        self.bar = tqdm(total=total, unit="patch", disable=not sys.stderr.isatty(), leave=False)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.perf_counter()
        if self.bar.disable and now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / max(1, self.total)
        return (
            f"{self.done}/{self.total} patches ({pct:.0f} %), {rate:.1f} patches/s, ETA {eta:.0f} s"
        )

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        self.bar.close()


# --- writing -------------------------------------------------------------------------------------


class ChunkedRows:
    """Buffers batches and writes whole zarr chunks, so no chunk is recompressed once per batch."""

    def __init__(self, writer: StoreWriter, name: str, chunk_rows: int) -> None:
        self.writer, self.name, self.chunk_rows = writer, name, chunk_rows
        self.parts: list[np.ndarray] = []
        self.pending = 0
        self.start = 0

    def add(self, rows: np.ndarray) -> None:
        self.parts.append(rows)
        self.pending += len(rows)
        if self.pending >= self.chunk_rows:
            self.flush(whole_chunks=True)

    def flush(self, whole_chunks: bool = False) -> None:
        if not self.parts:
            return
        data = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        n = (len(data) // self.chunk_rows) * self.chunk_rows if whole_chunks else len(data)
        if n:
            self.writer.write(self.name, self.start, data[:n])
            self.start += n
        rest = data[n:]
        self.parts = [rest] if len(rest) else []
        self.pending = len(rest)


def base_attrs(tiles: Tiles, slide_path: str | os.PathLike) -> dict[str, Any]:
    """What every feature store records besides the encoder: the slide, the tiles, the software."""
    import timm
    import torch

    attrs: dict[str, Any] = {
        "slide": str(Path(slide_path).resolve()),
        "slide_id": slide_id(slide_path),
        "tiles_store": str(tiles.path.resolve()),
        "tiles": tiles.attrs,
        "n_patches": len(tiles.coords),
        "failed": tiles.failed,
        "version": pipeline.__version__,
        "software": {"torch": torch.__version__, "timm": timm.__version__},
    }
    if tiles.failed:
        attrs["error"] = tiles.attrs.get("error", "tiling failed")
    return attrs


def write_empty_features(
    out_path: str | os.PathLike,
    tiles: Tiles,
    slide_path: str | os.PathLike,
    spec,
    weights: str,
    dtype: str,
    error: str | None = None,
) -> Path:
    """A [0, dim] store for a slide with no patches, a failed tiling, or (``error``) pixels that
    could not be read during extraction; it carries the reason."""
    attrs = {
        **base_attrs(tiles, slide_path),
        "encoder": spec.name,
        "dim": spec.dim,
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "weights": weights,
        "weights_loaded": False,  # nothing to encode, so the model was not built
        "dtype": dtype,
    }
    if error is not None:
        attrs.update(failed=True, error=error)
    arrays = {
        "features": np.zeros((0, spec.dim), dtype=dtype),
        "coords": np.zeros((0, 2), dtype=np.int32),
    }
    return write_store(out_path, arrays, attrs)


# --- extraction ----------------------------------------------------------------------------------


def extract_features(
    slide_path: str | os.PathLike,
    tiles: Tiles,
    out_path: str | os.PathLike,
    encoder,
    options: ExtractOptions,
    chunk_rows: int = 4096,
) -> dict[str, Any]:
    """Encode every patch of ``tiles`` and publish ``features``/``coords`` at ``out_path``."""
    import torch

    name = slide_id(slide_path)
    log = get_logger("extract", name)
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device, encoder.spec.precision)
    threads = configure_threads(options.workers)
    coords = tiles.coords
    n, dim = len(coords), encoder.spec.dim

    with open_slide(slide_path, tiles.attrs.get("reader", "auto")) as slide:
        check_tiles_match(slide, tiles)
    dataset = PatchChunks(
        slide_path,
        coords,
        tiles.geometry(),
        chunk_size(options.batch_size, options.workers),
        tiles.attrs.get("reader", "auto"),
    )
    encoder = encoder.to(device)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # one input shape for the whole slide
    log.info(
        "%d patches with %s (%d-d, %s weights) on %s, %s, batch %d, %d decoding worker(s), "
        "%d model thread(s)",
        n,
        encoder.spec.name,
        dim,
        encoder.provenance.get("weights"),
        device_name(device),
        precision,
        options.batch_size,
        options.workers,
        threads["model_threads"],
    )
    shapes = {"features": ((n, dim), options.dtype), "coords": ((n, 2), np.int32)}
    progress = Progress(n, log)
    try:
        with StoreWriter(out_path, shapes, chunk_rows=chunk_rows) as writer:
            writer.write("coords", 0, coords.astype(np.int32))
            rows = ChunkedRows(writer, "features", chunk_rows)
            loader = make_loader(dataset, options.workers, device.type == "cuda")
            batches = gather_batches(loader, options.batch_size, device)
            for batch in encode_batches(encoder, batches, device, precision):
                rows.add(_checked(batch, dim, options.dtype, out_path, precision))
                progress.update(len(batch))
            rows.flush()
            seconds = progress.elapsed
            attrs = {
                **base_attrs(tiles, slide_path),
                **encoder.attrs(),
                "precision": precision,
                "device": device_name(device),
                "dtype": options.dtype,
                "extraction": {
                    "batch_size": options.batch_size,
                    **threads,
                    "seconds": round(seconds, 3),
                    "patches_per_s": round(n / seconds, 2) if seconds > 0 else None,
                },
            }
            writer.close(attrs)
    finally:
        progress.close()
        dataset.close()
    log.info(
        "wrote %s: %d patches in %.1f s (%.1f patches/s)",
        out_path,
        n,
        progress.elapsed,
        n / max(progress.elapsed, 1e-9),
    )
    return attrs


def encode_batches(encoder, batches, device, precision: str) -> Iterator[np.ndarray]:
    """Features per uint8 batch as float32 numpy, fetched one batch late so the GPU queue stays
    full."""
    import torch

    pending = None
    channels_last = device.type == "cuda"
    with torch.inference_mode():
        for patches in batches:
            x = patches.to(device, non_blocking=True)
            with autocast_context(precision, device):
                images = encoder.preprocess(x)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                out = encoder(images)
            if pending is not None:
                yield pending.float().cpu().numpy()
            pending = out
        if pending is not None:
            yield pending.float().cpu().numpy()


def _checked(features: np.ndarray, dim: int, dtype: str, where, precision: str) -> np.ndarray:
    if features.ndim != 2 or features.shape[1] != dim:
        raise PipelineError(
            where,
            f"encoder produced features of shape {list(features.shape)}, expected [batch, {dim}]",
            "The weights or config describe another architecture; check --weights.",
        )
    out = features.astype(dtype)
    if not np.isfinite(out).all():
        raise PipelineError(
            where,
            f"encoder produced NaN/inf features (precision {precision}, stored as {dtype})",
            "Use --precision fp32 or --dtype float32.",
        )
    return out


def run_extraction(
    slide_path: str | os.PathLike,
    tiles_path: str | os.PathLike,
    out_path: str | os.PathLike,
    encoder_name: str,
    weights: str,
    options: ExtractOptions,
    record_failure: bool = False,
) -> dict[str, Any]:
    """The whole ``wsi-mil extract`` job: empty/failed tile stores give an empty feature store
    without building the model; otherwise build the encoder and extract.

    With ``record_failure``, a slide whose pixels cannot be read publishes an empty store marked
    ``failed`` with the error (as ``wsi-mil tile --record-failure`` does), so the cohort goes on.
    """
    from pipeline.encoders import create_encoder, get_spec

    spec = get_spec(encoder_name)
    tiles = read_tiles(tiles_path)
    log = get_logger("extract", slide_id(slide_path))
    if tiles.failed or len(tiles.coords) == 0:
        why = (
            f"tiling failed ({tiles.attrs.get('error', 'no reason recorded')})"
            if tiles.failed
            else "no patches"
        )
        log.warning("%s: writing an empty [0, %d] feature store", why, spec.dim)
        write_empty_features(out_path, tiles, slide_path, spec, weights, options.dtype)
        return {"n_patches": 0, "failed": tiles.failed}
    encoder = create_encoder(encoder_name, weights)
    try:
        return extract_features(slide_path, tiles, out_path, encoder, options)
    except PipelineError as err:
        if not record_failure or Path(err.where) != Path(slide_path):
            raise
        log.error("%s (recorded: an empty feature store marked failed)", err.line())
        write_empty_features(out_path, tiles, slide_path, spec, weights, options.dtype, err.line())
        return {"n_patches": 0, "failed": True}
