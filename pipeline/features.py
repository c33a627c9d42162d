"""Patch features of slides: encode tile-store patches in batches, write one zarr store per slide.

The data path is built so the model, not reading, is the bottleneck (see :mod:`pipeline.patches` for
decoding): patches cross to the model as uint8 (4× less than float), pinned on CUDA, and are resized
and normalised there as one batched tensor op; CUDA runs under autocast (bf16 by default) with
channels_last, and results are copied back one batch late so the GPU never waits for the host.

:class:`Embedder` holds one encoder on one device and embeds a *group* of slides through one
DataLoader, so the model is built once per group, decoding runs ahead across slide boundaries, and a
background thread compresses and publishes each slide's store while the next slide is embedded.
Features are written chunk by chunk, so memory is bounded whatever the slide's size, and each store
is published atomically only when complete.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import pipeline
from pipeline.device import (
    autocast_context,
    check_precision,
    device_name,
    resolve_device,
    resolve_precision,
)
from pipeline.errors import PipelineError
from pipeline.log import get_logger
from pipeline.patches import (
    CohortChunks,
    PatchChunks,
    chunk_size,
    configure_threads,
    gather_batches,
    make_loader,
)
from pipeline.progress import Progress
from pipeline.settings import FeatureDtype, FeatureSettings
from pipeline.slides import open_slide, slide_id
from pipeline.store import ChunkedRows, StoreWriter, WriteQueue, write_store
from pipeline.tilestore import Tiles, check_tiles_match, read_tiles

__all__ = [
    "ExtractOptions",
    "Embedder",
    "Tiles",
    "check_tiles_match",
    "chunk_size",
    "configure_threads",
    "extract_features",
    "gather_batches",
    "read_tiles",
    "resolve_device",
    "resolve_precision",
]

DTYPES = tuple(FeatureDtype)  # the schema's features.dtype values


@dataclass(frozen=True)
class ExtractOptions:
    """How to run an extraction (``features`` section of the config; CLI flags override)."""

    batch_size: int = 64
    workers: int = 4
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "float16"

    @classmethod
    def from_config(cls, settings: FeatureSettings, **overrides: Any) -> ExtractOptions:
        """The run part of the ``features`` settings, CLI flags (not None) overriding it."""
        values = {k: getattr(settings, k) for k in asdict(cls())}
        values["dtype"] = str(settings.dtype)
        values.update({k: v for k, v in overrides.items() if v is not None})
        options = cls(**values)
        if options.batch_size < 1 or options.workers < 0:
            raise PipelineError(
                "features", "batch size must be ≥ 1 and workers ≥ 0", "Fix --batch-size/--workers."
            )
        check_precision(options.precision, "features.precision")
        if options.dtype not in DTYPES:
            raise PipelineError(
                "features",
                f"dtype '{options.dtype}' not supported",
                f"Use dtype {'|'.join(DTYPES)}.",
            )
        return options

    def requested(self, encoder: str, weights: str) -> dict[str, str]:
        """What a store is asked to contain (not how it is computed): recorded in its attrs, so a
        store left by a killed group job is reused only when it answers the same request."""
        from pipeline.staging import request

        return request(encoder, weights, self.precision, self.dtype)


# --- store attrs ---------------------------------------------------------------------------------


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
    extra: dict[str, Any] | None = None,
) -> Path:
    """A [0, dim] store for a slide with no patches, a failed tiling, or (``error``) pixels that
    could not be read during extraction; it carries the reason."""
    attrs = {
        **base_attrs(tiles, slide_path),
        **spec.store_attrs(),
        "weights": weights,
        "weights_loaded": False,  # nothing to encode, so the model was not built
        "dtype": dtype,
    }
    if error is not None:
        attrs.update(failed=True, error=error)
    attrs.update(extra or {})
    arrays = {
        "features": np.zeros((0, spec.dim), dtype=dtype),
        "coords": np.zeros((0, 2), dtype=np.int32),
    }
    return write_store(out_path, arrays, attrs)


# --- extraction ----------------------------------------------------------------------------------


@dataclass
class SlideWork:
    """One slide of a group: where it comes from and where its store goes."""

    slide: Path
    tiles: Tiles
    out: Path
    extra: dict[str, Any] = field(default_factory=dict)  # attrs to add (what was requested, ...)


class Embedder:
    """One encoder on one device, embedding a group of slides through one DataLoader.

    ``embed(works)`` yields ``(work, attrs | PipelineError)`` per slide in order; a slide whose
    pixels cannot be read yields its error (the others carry on), any other error stops the group
    (stores already finished stay published).
    """

    def __init__(self, encoder, options: ExtractOptions, chunk_rows: int = 4096) -> None:
        import torch

        self.options, self.chunk_rows = options, chunk_rows
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(
            options.precision, self.device, encoder.spec.precision, "features.precision"
        )
        self.threads = configure_threads(options.workers, self.device.type)
        self.encoder = encoder.to(self.device)
        if self.device.type == "cuda":
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # one input shape for every slide

    def embed(self, works: list[SlideWork]):
        ready = []
        for work in works:
            try:
                with open_slide(work.slide, work.tiles.reader) as slide:
                    check_tiles_match(slide, work.tiles)
            except PipelineError as err:
                yield work, err
                continue
            ready.append(work)
        datasets = [
            PatchChunks(
                w.slide,
                w.tiles.coords,
                w.tiles.geometry(),
                chunk_size(self.options.batch_size, self.options.workers),
                w.tiles.reader,
            )
            for w in ready
        ]
        cohort = CohortChunks(datasets)
        queue = WriteQueue()
        try:
            loader = make_loader(cohort, self.options.workers, self.device.type == "cuda")
            stream = iter(loader)
            for work, dataset in zip(ready, datasets, strict=True):
                chunks = itertools.islice(stream, len(dataset))
                try:
                    yield work, self._embed_one(work, chunks, queue)
                except PipelineError as err:
                    for _ in chunks:  # the rest of this slide's patches, still in flight
                        pass
                    yield work, err
            queue.drain()
        finally:
            queue.close()
            cohort.close()

    def _embed_one(self, work: SlideWork, chunks, queue: WriteQueue) -> dict[str, Any]:
        options, tiles = self.options, work.tiles
        log = get_logger("extract", slide_id(work.slide))
        n, dim = len(tiles.coords), self.encoder.spec.dim
        log.info(
            "%d patches with %s (%d-d, %s weights) on %s, %s, batch %d, %d decoding worker(s), "
            "%d model thread(s)",
            n,
            self.encoder.spec.name,
            dim,
            self.encoder.provenance.get("weights"),
            device_name(self.device),
            self.precision,
            options.batch_size,
            options.workers,
            self.threads["model_threads"],
        )
        if line := self.encoder.spec.mpp_warning(tiles.attrs.get("target_mpp")):
            log.warning("%s", line)
        shapes = {"features": ((n, dim), options.dtype), "coords": ((n, 2), np.int32)}
        writer = StoreWriter(work.out, shapes, chunk_rows=self.chunk_rows)
        progress = Progress(n, log)
        try:
            writer.write("coords", 0, tiles.coords.astype(np.int32))
            rows = ChunkedRows(writer, "features", self.chunk_rows, queue)
            batches = gather_batches(chunks, options.batch_size, self.device)
            for batch in encode_batches(self.encoder, batches, self.device, self.precision):
                rows.add(_checked(batch, dim, options.dtype, work.out, self.precision))
                progress.update(len(batch))
            rows.flush()
        except BaseException:
            queue.settle()  # queued writes of this store finish before it is removed
            writer.abort()
            raise
        finally:
            progress.close()
        seconds = progress.elapsed
        attrs = {
            **base_attrs(tiles, work.slide),
            **self.encoder.attrs(),
            "precision": self.precision,
            "device": device_name(self.device),
            "dtype": options.dtype,
            "extraction": {
                "batch_size": options.batch_size,
                **self.threads,
                "seconds": round(seconds, 3),
                "patches_per_s": round(n / seconds, 2) if seconds > 0 else None,
            },
        }
        attrs.update(work.extra)
        queue.submit(_publish, writer, attrs, log, n, seconds)
        return attrs


def _publish(writer: StoreWriter, attrs: dict[str, Any], log, n: int, seconds: float) -> None:
    writer.publish(attrs)
    log.info(
        "wrote %s: %d patches in %.1f s (%.1f patches/s)",
        writer.final,
        n,
        seconds,
        n / max(seconds, 1e-9),
    )


def extract_features(
    slide_path: str | os.PathLike,
    tiles: Tiles,
    out_path: str | os.PathLike,
    encoder,
    options: ExtractOptions,
    chunk_rows: int = 4096,
) -> dict[str, Any]:
    """Encode every patch of ``tiles`` and publish ``features``/``coords`` at ``out_path``."""
    work = SlideWork(Path(slide_path), tiles, Path(out_path))
    # consumed whole: the store is published (and a failed write raised) when embed() ends
    ((_, result),) = list(Embedder(encoder, options, chunk_rows).embed([work]))
    if isinstance(result, PipelineError):
        raise result
    return result


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
