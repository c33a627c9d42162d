"""Zarr stores and files written atomically, with provenance attributes.

Every output is built at a hidden temporary sibling and renamed into place only when complete, so an
interrupted job (killed, out of memory, SLURM time limit) never leaves something that looks finished:
Snakemake and the next stage see either the old output, or nothing, or the whole new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.chunks import CHUNKS_ATTR, chunk_sizes, damage
from pipeline.errors import PipelineError
from pipeline.lifeline import pid_alive

# a chunk of zeros gets a file too, so a missing chunk file is always damage
EVERY_CHUNK = {"write_empty_chunks": True}


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporary siblings of ``path`` left by writers that died without cleaning up (SIGKILL).

    A temporary belongs to a process id; one whose process is gone can never be published.
    """
    return _remove_stale(path.parent.glob(f".{path.name}.tmp-*"))


def remove_stale_temporaries_in(folder: str | os.PathLike) -> list[Path]:
    """The same for every output of ``folder`` (one listing): the temporaries of outputs that were
    later published by another route (a staged store moved into place) are never written again."""
    return _remove_stale(Path(folder).glob(".*.tmp-*"))


def _remove_stale(candidates) -> list[Path]:
    removed = []
    for tmp in candidates:
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not pid_alive(pid):
            _remove(tmp)
            removed.append(tmp)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (a file or a directory); publish it on success.

    On any exception (including KeyboardInterrupt) the temporary is removed and ``path`` is untouched.
    An existing ``path`` is replaced only after the new one is complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp} for {final}")
        if final.exists() or final.is_symlink():
            old = _tmp_sibling(final)
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError) and (
            err.filename is None or str(err.filename).startswith(str(tmp))
        ):
            err.filename = os.fspath(final)  # name the output, not a temporary (CLI: one line)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (sorted keys, NaN → null so every reader can parse it)."""
    write_text(path, json.dumps(to_jsonable(data), indent=2, sort_keys=True) + "\n")


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, paths and NaN into plain JSON values (zarr attrs need this too)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_store(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    chunk_rows: int = 4096,
) -> Path:
    """Write a zarr v3 group of 2-D arrays (chunked by rows) plus attrs, atomically."""
    import zarr

    final = Path(path)
    with atomic_path(final) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        for name, data in arrays.items():
            data = np.asarray(data)
            chunks = (max(1, min(chunk_rows, data.shape[0])),) + data.shape[1:]
            arr = group.create_array(
                name, shape=data.shape, dtype=data.dtype, chunks=chunks, config=EVERY_CHUNK
            )
            if data.size:
                arr[...] = data
        group.attrs.update(to_jsonable({**attrs, CHUNKS_ATTR: _complete_chunks(group, tmp)}))
    return final


class StoreWriter:
    """Append rows to zarr arrays of known final length, then publish atomically.

    For stages that produce data in batches (feature extraction) and must not hold everything in
    memory or leave a half-written store behind.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shapes: Mapping[str, tuple[tuple[int, ...], Any]],
        chunk_rows: int = 4096,
    ) -> None:
        import zarr

        self.final = Path(path)
        self._ctx = atomic_path(self.final)
        self.tmp = self._ctx.__enter__()
        self.arrays = {}
        try:
            self.group = zarr.open_group(store=str(self.tmp), mode="w", zarr_format=3)
            for name, (shape, dtype) in shapes.items():
                chunks = (max(1, min(chunk_rows, shape[0])),) + tuple(shape[1:])
                self.arrays[name] = self.group.create_array(
                    name, shape=shape, dtype=dtype, chunks=chunks, config=EVERY_CHUNK
                )
        except OSError as err:  # a full disk already: name this store
            self.abort()
            raise _named(err, self.tmp) from None
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, start: int, data: np.ndarray) -> None:
        try:
            self.arrays[name][start : start + len(data)] = data
        except OSError as err:  # zarr's write() names no file: name this store (a full disk)
            raise _named(err, self.tmp) from None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return bool(self._ctx.__exit__(exc_type, exc, tb))

    def close(self, attrs: Mapping[str, Any]) -> None:
        """Set attrs (and the size of every chunk written, so a damaged store is told from a
        complete one); the store is published when the ``with`` block exits without error."""
        sizes = _complete_chunks(self.group, self.tmp)
        try:
            self.group.attrs.update(to_jsonable({**attrs, CHUNKS_ATTR: sizes}))
        except OSError as err:
            raise _named(err, self.tmp) from None

    def publish(self, attrs: Mapping[str, Any]) -> Path:
        """Set attrs and publish now (the same as leaving the ``with`` block), from any thread."""
        try:
            self.close(attrs)
        except BaseException:
            self.abort()
            raise
        self._ctx.__exit__(None, None, None)
        return self.final

    def abort(self) -> None:
        """Remove the temporary store; ``path`` keeps what it had before."""
        with contextlib.suppress(RuntimeError):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _complete_chunks(group, tmp: Path) -> dict[str, int]:
    """The chunk sizes to record; raises when an array lacks a chunk file. Every chunk is written
    (``EVERY_CHUNK``), so a missing one is a write that failed (a full disk, in a writer thread whose
    error the caller has not seen yet): such a store must never be published."""
    import math

    sizes = chunk_sizes(tmp)
    for name, arr in group.arrays():
        expected = math.prod(math.ceil(n / c) for n, c in zip(arr.shape, arr.chunks, strict=True))
        written = sum(1 for key in sizes if key.startswith(f"{name}/"))
        if written != expected:
            raise RuntimeError(
                f"{tmp}: {written} of the {expected} chunks of '{name}' were written; not published"
            )
    return sizes


def _named(err: OSError, tmp: Path) -> OSError:
    """``err`` naming ``tmp`` when it names no file (``pipeline.errors`` then names the store)."""
    if err.filename is None:
        err.filename = os.fspath(tmp)
    return err


class ChunkedRows:
    """Buffers batches of rows and writes whole zarr chunks, so no chunk is recompressed once per
    batch; with a :class:`WriteQueue` the writes run in its thread, overlapping the next batches."""

    def __init__(
        self, writer: StoreWriter, name: str, chunk_rows: int, queue: WriteQueue | None = None
    ) -> None:
        self.writer, self.name, self.chunk_rows, self.queue = writer, name, chunk_rows, queue
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
            if self.queue is None:
                self.writer.write(self.name, self.start, data[:n])
            else:
                self.queue.submit(self.writer.write, self.name, self.start, data[:n])
            self.start += n
        rest = data[n:]
        self.parts = [rest] if len(rest) else []
        self.pending = len(rest)


class WriteQueue:
    """One background thread running writes in submission order, so compressing and writing a store
    overlaps with computing the next rows (or the next slide). At most ``max_pending`` writes wait,
    which bounds memory; a failed write raises in the caller at the next ``submit`` or ``drain``, and
    no write queued after it runs (the publication of a store whose chunk failed on a full disk would
    otherwise publish it without that chunk, which zarr reads as zeros)."""

    def __init__(self, max_pending: int = 4) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._pending: list = []
        self._failed: BaseException | None = None

    def submit(self, fn, *args) -> None:
        while len(self._pending) >= self.max_pending:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._run, fn, args))

    def _run(self, fn, args) -> Any:
        """Run one write, unless an earlier one failed: a store whose chunk write failed (a full
        disk) must not be published by the publication queued after it."""
        writers = [w for w in (getattr(fn, "__self__", None), *args) if isinstance(w, StoreWriter)]
        if self._failed is not None:
            for writer in writers:  # a store that will not be published leaves no temporary
                writer.abort()
            raise RuntimeError("an earlier write failed; not run") from self._failed
        try:
            return fn(*args)
        except BaseException as err:
            self._failed = err
            for writer in writers:
                writer.abort()
            raise

    def drain(self) -> None:
        """Wait for every submitted write; re-raise the first failure."""
        while self._pending:
            self._pending.pop(0).result()

    def settle(self) -> None:
        """Wait for every submitted write, ignoring failures (the caller is already failing)."""
        while self._pending:
            with contextlib.suppress(BaseException):
                self._pending.pop(0).result()

    def close(self) -> None:
        """Let queued writes finish (a finished store is still published), then stop the thread."""
        self._pool.shutdown(wait=True)


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Attributes of a store; a clear error when the path is not a complete store."""
    return dict(open_store(path).attrs)


def open_store(path: str | os.PathLike):
    """Open a published zarr group read-only; a clear error when it is damaged (a chunk gone or not
    the size it was written with)."""
    import zarr

    p = Path(path)
    if not p.exists():
        raise PipelineError(p, "store does not exist", "Run the stage that writes it first.")
    try:
        group = zarr.open_group(store=str(p), mode="r")
    except Exception as err:  # zarr raises several types for a damaged store
        raise PipelineError(
            p, f"not a readable zarr store ({err})", "Delete it and re-run the stage."
        ) from err
    if broken := damage(p, dict(group.attrs)):  # zarr would read a missing chunk as zeros
        raise PipelineError(p, broken, "Delete it and re-run the stage that writes it.")
    return group


def read_array(path: str | os.PathLike, name: str) -> np.ndarray:
    """Read one whole array of a store into memory."""
    group = open_store(path)
    if name not in group:
        raise PipelineError(
            path, f"store has no '{name}' array", "Re-run the stage that writes it."
        )
    return np.asarray(group[name][...])
