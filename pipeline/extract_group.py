"""Feature extraction for many slides per process: one model load, stores kept across a kill.

A cohort's cost should be what the model costs. Each process imports torch, builds the encoder and
loads (fingerprints) its weights once, then embeds a *group* of slides with one DataLoader
(:class:`pipeline.features.Embedder`). Every slide's store is published atomically as soon as it
is complete, and records what was asked for (``requested``), so a group job killed half-way loses
only the slide in progress: re-running it with ``skip_done`` keeps the finished stores (not even
rewritten) and embeds the rest. With several devices the slides are sharded over one worker process
per device; every store is the same as a one-device run would write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, first_line
from pipeline.features import Embedder, ExtractOptions, SlideWork, write_empty_features
from pipeline.log import get_logger
from pipeline.slides import slide_id
from pipeline.staging import answers, store_attrs
from pipeline.tilestore import Tiles, read_tiles


@dataclass(frozen=True)
class SlideJob:
    """One slide to embed: the slide file, its tile store, the feature store to publish."""

    slide: Path
    tiles: Path
    out: Path


@dataclass
class Outcome:
    """What happened to one slide: ``done``, ``skipped`` (a matching store was there), ``empty``
    (no patches or failed tiling), ``failed`` (unreadable pixels, recorded) or ``error``."""

    job: SlideJob
    status: str
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def store_answers(out: Path, tiles: Tiles, requested: dict[str, Any]) -> bool:
    """True when ``out`` is a published feature store made from these tiles for this request."""
    return answers(store_attrs(out), tiles.path, requested)


def run_group(
    jobs: list[SlideJob],
    encoder_name: str,
    weights: str,
    options: ExtractOptions,
    record_failure: bool = False,
    raise_errors: bool = False,
    skip_done: bool = False,
    group_summary: str | None = None,
) -> list[Outcome]:
    """Embed ``jobs`` in order with one encoder; one :class:`Outcome` per job, in order.

    A slide that cannot be read is recorded as failed (``record_failure``), raised
    (``raise_errors``, the one-slide command) or logged as an ``error`` while the others carry on.
    The model is built only when some slide has patches to embed. ``group_summary`` (the
    workflow's record of the group job) is recorded in each new store's attrs.
    """
    from pipeline.encoders import create_encoder, get_spec

    spec = get_spec(encoder_name)
    requested = options.requested(encoder_name, weights)
    extra = {"requested": requested}
    if group_summary is not None:
        extra["group_summary"] = group_summary
    outcomes: dict[int, Outcome] = {}
    works: dict[int, SlideWork] = {}

    def failed(i: int, err: PipelineError, tiles: Tiles | None) -> None:
        job, log = jobs[i], get_logger("extract", slide_id(jobs[i].slide))
        if record_failure and tiles is not None and Path(err.where) == Path(job.slide):
            log.error("%s (recorded: an empty feature store marked failed)", err.line())
            write_empty_features(
                job.out, tiles, job.slide, spec, weights, options.dtype, err.line(), extra
            )
            outcomes[i] = Outcome(job, "failed", {"n_patches": 0, "failed": True}, err.line())
        elif raise_errors:
            raise err
        else:
            log.error("%s", err.line())
            outcomes[i] = Outcome(job, "error", error=err.line())

    for i, job in enumerate(jobs):
        try:
            tiles = read_tiles(job.tiles)
        except PipelineError as err:
            failed(i, err, None)
            continue
        if skip_done and store_answers(job.out, tiles, requested):
            get_logger("extract", slide_id(job.slide)).info("kept %s (already done)", job.out)
            outcomes[i] = Outcome(job, "skipped", {"n_patches": len(tiles.coords)})
        elif tiles.failed or len(tiles.coords) == 0:
            outcomes[i] = _write_empty(job, tiles, spec, weights, options, extra)
        else:
            works[i] = SlideWork(job.slide, tiles, job.out, extra)
    if works:
        index = {id(w): i for i, w in works.items()}
        embedder = Embedder(create_encoder(encoder_name, weights), options)
        for work, result in embedder.embed(list(works.values())):
            i = index[id(work)]
            if isinstance(result, PipelineError):
                failed(i, result, work.tiles)
            else:
                outcomes[i] = Outcome(jobs[i], "done", result)
    return [outcomes[i] for i in range(len(jobs))]


def run_extraction(
    slide_path: str | os.PathLike,
    tiles_path: str | os.PathLike,
    out_path: str | os.PathLike,
    encoder_name: str,
    weights: str,
    options: ExtractOptions,
    record_failure: bool = False,
) -> dict[str, Any]:
    """The whole one-slide ``wsi-mil extract`` job: empty/failed tile stores give an empty feature
    store without building the model; otherwise build the encoder and extract.

    With ``record_failure``, a slide whose pixels cannot be read publishes an empty store marked
    ``failed`` with the error (as ``wsi-mil tile --record-failure`` does), so the cohort goes on.
    """
    outcome = run_group(
        [SlideJob(Path(slide_path), Path(tiles_path), Path(out_path))],
        encoder_name,
        weights,
        options,
        record_failure=record_failure,
        raise_errors=True,
    )[0]
    return outcome.result


def _write_empty(job, tiles, spec, weights, options, extra) -> Outcome:
    why = (
        f"tiling failed ({tiles.attrs.get('error', 'no reason recorded')})"
        if tiles.failed
        else "no patches"
    )
    get_logger("extract", slide_id(job.slide)).warning(
        "%s: writing an empty [0, %d] feature store", why, spec.dim
    )
    write_empty_features(job.out, tiles, job.slide, spec, weights, options.dtype, extra=extra)
    return Outcome(job, "empty", {"n_patches": 0, "failed": tiles.failed})


# --- several devices -----------------------------------------------------------------------------


def balance(jobs: list[SlideJob], shards: int) -> list[list[SlideJob]]:
    """Split ``jobs`` into ``shards`` lists of about equal patch counts (largest slide first to the
    least loaded shard; deterministic). An unreadable tile store counts as 0 patches."""
    sizes = []
    for job in jobs:
        try:
            sizes.append(len(read_tiles(job.tiles).coords))
        except PipelineError:
            sizes.append(0)
    loads, out = [0] * shards, [[] for _ in range(shards)]
    for i in sorted(range(len(jobs)), key=lambda i: (-sizes[i], i)):
        k = loads.index(min(loads))
        out[k].append(i)
        loads[k] += sizes[i]
    return [[jobs[i] for i in sorted(s)] for s in out]


def run_sharded(
    jobs: list[SlideJob],
    encoder_name: str,
    weights: str,
    options: ExtractOptions,
    devices: list[str],
    **kwargs: Any,
) -> list[Outcome]:
    """:func:`run_group` over ``devices``: one spawned worker process per device (each builds the
    model once and gets an equal share of the CPU cores); outcomes in the order of ``jobs``."""
    if len(devices) <= 1:
        device = devices[0] if devices else options.device
        return run_group(jobs, encoder_name, weights, replace(options, device=device), **kwargs)
    import multiprocessing
    import queue as queue_module

    from pipeline.patches import thread_budget

    shards = balance(jobs, len(devices))
    threads = max(1, thread_budget() // len(devices))
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_shard_main,
            args=(k, shard, encoder_name, weights, replace(options, device=dev), threads),
            kwargs={"results": results, **kwargs},
            name=f"extract-{dev}-{k}",
        )
        for k, (dev, shard) in enumerate(zip(devices, shards, strict=True))
        if shard
    ]
    received: dict[int, list[Outcome]] = {}
    try:
        for p in procs:
            p.start()
        while len(received) < len(procs):
            try:
                k, outcomes, error = results.get(timeout=1.0)
            except queue_module.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise PipelineError(
                        "extract",
                        f"worker {dead[0].name} died (exit code {dead[0].exitcode})",
                        "Finished stores are kept; re-run to complete the rest.",
                    ) from None
                continue
            if error is not None:
                raise worker_error(error, devices[k])
            received[k] = outcomes
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    by_job = {o.job: o for outs in received.values() for o in outs}
    return [by_job[j] for j in jobs]


def _shard_main(k, jobs, encoder_name, weights, options, threads, results, **kwargs) -> None:
    """A device's worker process: its share of cores, then :func:`run_group` on its slides."""
    from pipeline.log import setup_logging

    os.environ["OMP_NUM_THREADS"] = str(threads)
    setup_logging()
    try:
        results.put((k, run_group(jobs, encoder_name, weights, options, **kwargs), None))
    except PipelineError as err:  # pickled with its type (PipelineError.__reduce__)
        results.put((k, None, err))
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line
        cause = f"{type(err).__name__}: {first_line(err)}"
        results.put((k, None, PipelineError("extract", cause, "See the worker's log.")))


def worker_error(error: PipelineError, device: str) -> PipelineError:
    """A worker's error as the parent raises it: the same kind (a ``ConfigError`` still stops the run,
    a ``SlideReadError`` still names its slide), with the device it happened on."""
    return type(error)(error.where, f"{error.cause} (worker on {device})", error.remedy)
