"""Writing files safely and in parallel: the two helpers every data stage shares.

- :func:`atomic_path` / :func:`write_atomic`: a file appears whole or not at all, also when
  the writer is killed, so a re-run never mistakes half a manifest, shard, FLAC file or
  checkpoint for a finished one.
- :func:`parallel_map`: one function over many items in worker processes (probing audio,
  writing shards, rendering speech), with a progress hook so each stage prints its own lines.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

TMP_MARK = ".tmp-"
"""Part of every temporary name (``.<name>.tmp-<pid>``): what a clean-up of killed runs looks for."""


# --- atomic writes ----------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed onto ``path`` when the block
    ends without an exception, removed otherwise.

    Readers see the old file or the whole new one, never a partial one: the rename is atomic
    within a folder. ``fsync`` flushes the data to disk before the rename publishes it (for
    files a crash of the machine must not truncate, such as checkpoints).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_orphaned_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed writers left under ``folder`` (recursively);
    return them. A temporary name ends in its writer's pid: one of a live process is kept,
    since that writer may still be at work."""
    folder = Path(folder)
    removed = []
    for path in folder.rglob(f"*{TMP_MARK}*") if folder.is_dir() else []:
        pid = path.name.rpartition(TMP_MARK)[2]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_atomic(path: str | Path, data: bytes | memoryview | str, *, fsync: bool = False) -> None:
    """Write ``data`` (str as UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


# --- a process pool with a progress hook ------------------------------------------------------


def resolve_jobs(jobs: int) -> int:
    """Worker processes for ``--jobs``: 0 means every core this process may use."""
    if jobs < 0:
        raise ValueError(f"--jobs must be >= 0 (0: all cores), got {jobs}")
    if jobs == 0:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return jobs


class Progress(Protocol):
    """What :func:`parallel_map` tells about its progress."""

    def update(self, done: int, result: Any) -> None:
        """``done`` items are finished, the last of them gave ``result``."""
        ...

    def close(self) -> None:
        """Every item is finished."""
        ...


def parallel_map(fn: Callable[[T], R], items: Sequence[T], *, jobs: int,
                 progress: Progress | None = None, ordered: bool = True) -> list[R]:
    """``[fn(x) for x in items]`` in ``jobs`` processes (0: every core; 1: in this process,
    for readable tracebacks).

    ``ordered`` returns results in item order; otherwise in completion order, which lets
    ``progress`` see results as soon as they exist when items take very different times.
    Workers come from a fork server, so a parent that has started threads (torch, OpenMP)
    cannot deadlock them; a worker that dies raises BrokenProcessPool instead of hanging.
    """
    jobs = min(resolve_jobs(jobs), max(len(items), 1))
    results: list[R] = []

    def finished(result: R) -> None:
        results.append(result)
        if progress is not None:
            progress.update(len(results), result)

    if jobs == 1:
        for item in items:
            finished(fn(item))
    else:
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            if ordered:
                chunksize = max(1, min(64, len(items) // (jobs * 8)))
                for result in pool.map(fn, items, chunksize=chunksize):
                    finished(result)
            else:
                futures = [pool.submit(fn, item) for item in items]
                try:
                    for future in as_completed(futures):
                        finished(future.result())
                finally:
                    for future in futures:
                        future.cancel()  # after a failure: do not start what is left
    if progress is not None:
        progress.close()
    return results


class CountProgress:
    """A :func:`parallel_map` progress hook counting finished items: a tqdm bar on a terminal,
    ``label: done/total files (pct), rate, ETA`` lines every 30 s and a closing line in a log
    (:class:`asr.progress.Progress`)."""

    def __init__(self, label: str, total: int, unit: str = "files") -> None:
        from asr.progress import Progress

        self._progress = Progress(label, total, unit=unit)
        self._done = 0

    def update(self, done: int, result: Any = None) -> None:
        self._progress.update(done - self._done)
        self._done = done

    def close(self) -> None:
        self._progress.close()
