"""Big SQLite datasets built and exported by worker processes, in parallel (private).

Judging a capture (its example, gates and token counts) and rendering an export line are pure
Python that holds the GIL, so one process does one core's worth. For a SQLite store and at least
``MIN_PARALLEL`` captures (or items), the work is split into ranges, and worker processes do
them: each opens the database itself (a read-only connection, like the store's reader) and
returns a range's results; the parent takes them in order, so the outcome is byte for byte the
one-process one. At most two ranges per worker are in flight, so memory stays flat.

* ``parallel_verdicts`` (``create_dataset``): ranges of ``SEQ_CHUNK`` capture sequence numbers;
  a worker reads the captures of its range that match the filter and judges each
  (``storage._dataset_builder.judge``: gates, hashes, tiktoken counts); the parent's builder
  does what needs every capture (duplicates, splits, pairs) and writes the snapshot. The ranges
  end at the last capture stored when the build starts; captures stored during the build are
  left for the next dataset (a build in one process may still take some of them).
* ``parallel_jsonl`` (``export_dataset``): ranges of ``CHUNK`` item positions; a worker
  rebuilds and checks each example exactly as ``storage._export_rows`` does and returns the
  range's JSONL.

Workers are started with ``spawn`` (no state inherited from a parent that runs threads) and
lower their scheduling priority (``WORKER_NICE``), so work running beside a serving proxy
yields the CPU to it. Postgres, the streamed admin export and Parquet stay in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from storage._dataset_builder import Verdict, judge
from storage._export_formats import ITEM_ROWS
from storage._sqlite_datasets import dataset_row, items, rows_after
from storage._sqlite_read import chain, decode_rows, read_snapshot
from storage.datasets import Progress
from storage.errors import StoreError
from storage.examples import Example, build_example
from storage.query import CaptureFilter, StoredCapture

if TYPE_CHECKING:
    from storage.base import Store

T = TypeVar("T")

MIN_PARALLEL = 20_000  # items: below this, starting workers costs more than they save
# Workers per job when none is asked for: one per CPU, within ~300 MB for the whole job. A
# build worker holds the tokenizer (~80-105 MB each); an export worker ~60 MB.
MAX_BUILD_WORKERS = 2
MAX_EXPORT_WORKERS = 3
CHUNK = 1_000  # positions per task: a worker holds one range's rows, the parent 2 per worker
SEQ_CHUNK = 2_000  # capture sequence numbers per task
BATCH = 500  # items read per query inside a task
WORKER_NICE = 10
GC_THRESHOLDS = (10_000, 10, 10)  # see _start
BUSY_TIMEOUT_MS = 5_000


def sqlite_path(store: Store) -> str | None:
    """The database file of a SQLite store (the workers open it); None for any other store."""
    from storage.sqlite import SQLiteStore

    return store.path if isinstance(store, SQLiteStore) else None


def worker_count(items: int, workers: int | None, most: int) -> int:
    """How many worker processes a job of ``items`` captures or items uses (1: in process).

    ``workers`` None picks: one per CPU, at most ``most``, for ``MIN_PARALLEL`` or more, else
    in process."""
    if workers is not None:
        return max(1, workers)
    if items < MIN_PARALLEL:
        return 1
    return max(1, min(most, os.cpu_count() or 1))


async def parallel_jsonl(
    path: str,
    name: str,
    positions: int,
    split: str | None,
    fmt: str,
    workers: int,
    *,
    total: int,
    progress: Progress | None = None,
) -> AsyncIterator[tuple[bytes, int, int, int]]:
    """``(jsonl, lines, changed items, items seen)`` per range of the positions
    ``0 .. positions - 1`` of dataset ``name``, in order."""
    done = 0
    tasks = (
        (name, split, fmt, start, min(positions, start + CHUNK))
        for start in range(0, positions, CHUNK)
    )
    async for found in _in_order(path, workers, export_range, tasks):
        done += found[3]
        if progress is not None:
            progress(done, max(total, done))
        yield found


async def parallel_verdicts(
    path: str, where: CaptureFilter, near: bool, workers: int
) -> AsyncIterator[list[Verdict]]:
    """The verdicts of the captures matching ``where``, in stored order, one list per range."""
    last = await asyncio.to_thread(_last_seq, path)
    tasks = ((where, near, start, start + SEQ_CHUNK) for start in range(0, last + 1, SEQ_CHUNK))
    async for verdicts in _in_order(path, workers, judge_range, tasks):
        yield verdicts


async def _in_order(
    path: str, workers: int, fn: Callable[..., T], tasks: Iterator[tuple[Any, ...]]
) -> AsyncIterator[T]:
    """``fn(*task)`` for each task on a pool of worker processes, results in task order."""
    loop = asyncio.get_running_loop()
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start,
        initargs=(path,),
    )
    running: deque[asyncio.Future[T]] = deque()

    def submit() -> None:
        task = next(tasks, None)
        if task is not None:
            running.append(loop.run_in_executor(pool, fn, *task))

    try:
        for _ in range(2 * workers):
            submit()
        while running:
            try:
                found = await running.popleft()
            except BrokenProcessPool as exc:  # a worker was killed (out of memory?) or crashed
                raise StoreError(f"a dataset worker process stopped: {exc}") from None
            except sqlite3.Error as exc:
                raise StoreError(f"a dataset worker could not read {path}: {exc}") from None
            submit()
            yield found
    finally:
        for future in running:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _last_seq(path: str) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = ON")
        row = conn.execute("SELECT max(seq) FROM captures").fetchone()
    finally:
        conn.close()
    return int(row[0]) if row and row[0] is not None else 0


# -- in the worker process ------------------------------------------------------------------------

_conn: sqlite3.Connection | None = None


def _start(path: str) -> None:
    global _conn
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    # A worker allocates millions of short-lived, acyclic objects (rows, records, messages):
    # the collector's default pace (a young collection every 700 allocations, scanning what
    # the imports left too) cost ~5 µs of a ~85 µs capture. Imports are set aside for good;
    # the few cycles (a caught gate exception and its frame) are still collected, less often.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = ON")
    _conn = conn


def export_range(
    name: str, split: str | None, fmt: str, start: int, end: int
) -> tuple[bytes, int, int, int]:
    """For the items of dataset ``name`` at positions ``start <= p < end`` (of ``split``): the
    JSONL, its number of lines, the number of items that changed since the snapshot (left
    out), and the number of items seen."""
    conn = _conn
    if conn is None:
        raise RuntimeError("export worker used before it started")
    found_dataset = read_snapshot(conn, dataset_row, name)
    if found_dataset is None:
        return b"", 0, 0, 0  # deleted meanwhile: the parent finds items missing
    dataset_id = found_dataset[0]
    to_row = ITEM_ROWS[fmt]
    lines: list[bytes] = []
    changed = seen = 0
    after = start - 1
    while after < end - 1:
        found: list[Any] = read_snapshot(
            conn, items, dataset_id, split, after, min(BATCH, end - 1 - after)
        )
        inside = [row for row in found if row[0].position < end]
        if not inside:
            break
        for item, stored in inside:
            example = _rebuild(conn, stored)
            if example is None or example.content_hash != item.content_hash:
                changed += 1
            else:
                lines.append(orjson.dumps(to_row(example), option=orjson.OPT_APPEND_NEWLINE))
        seen += len(inside)
        if len(inside) < len(found):
            break  # the split's next item is past this range
        after = inside[-1][0].position
    return b"".join(lines), len(lines), changed, seen


def _rebuild(conn: sqlite3.Connection, stored: StoredCapture | None) -> Example | None:
    """``storage._export_rows.rebuild`` on this process's connection."""
    if stored is None:
        return None
    built = build_example(stored, _chain_of(conn, stored))
    return built if isinstance(built, Example) else None


def _chain_of(conn: sqlite3.Connection, stored: StoredCapture) -> list[StoredCapture] | None:
    """A Responses capture's conversation, oldest first (``Store.conversation``); else None."""
    if stored.record.previous_response_id is None:
        return None
    found = read_snapshot(conn, chain, stored.record.id)
    return found[0] if found is not None else None


def judge_range(where: CaptureFilter, near: bool, start: int, end: int) -> list[Verdict]:
    """The verdicts of the captures matching ``where`` with ``start <= seq < end``, in order."""
    conn = _conn
    if conn is None:
        raise RuntimeError("dataset worker used before it started")
    verdicts: list[Verdict] = []
    after = start - 1
    while after < end - 1:
        limit = min(BATCH, end - 1 - after)
        found, more, last = read_snapshot(conn, _captures_in, where, after, limit, end)
        for stored in found:
            verdicts.append(judge(stored, _chain_of(conn, stored), near=near))
        if not more:
            break
        after = last
    return verdicts


def _captures_in(
    conn: sqlite3.Connection, where: CaptureFilter, after: int, limit: int, end: int
) -> tuple[list[StoredCapture], bool, int]:
    """Up to ``limit`` captures matching ``where`` with ``after < seq < end``, whether more of
    the range may follow, and the last one's seq (one read transaction)."""
    rows = rows_after(conn, where, after, limit)
    inside = [row for row in rows if row[0] < end]
    more = len(inside) == len(rows) == limit
    return decode_rows(conn, inside), more, (inside[-1][0] if inside else after)
