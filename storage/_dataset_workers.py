"""Big SQLite exports rendered by worker processes, in parallel (storage.export; private).

Rebuilding an example from its capture is pure Python and holds the GIL, so one process
renders one core's worth. For a dataset of at least ``MIN_PARALLEL`` items in a SQLite store,
``parallel_jsonl`` splits the items into ranges of ``CHUNK`` positions and has worker processes
render them: each worker opens the database itself (a read-only connection, like the store's
reader), rebuilds and checks each example exactly as ``storage._export_rows`` does, and returns
the range's JSONL bytes. The parent writes the ranges in position order, so the output is
byte for byte the one-process export; at most two ranges per worker are in flight, so memory
stays flat.

Workers are started with ``spawn`` (no state inherited from a parent that runs threads) and
lower their scheduling priority (``WORKER_NICE``), so an export running beside a serving
proxy yields the CPU to it. Postgres exports, the streamed admin export and Parquet stay in
one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sqlite3
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import orjson

from storage._export_formats import ITEM_ROWS
from storage._sqlite_datasets import dataset_row, items
from storage._sqlite_read import chain, read_snapshot
from storage.datasets import Progress
from storage.examples import Example, build_example
from storage.query import StoredCapture

MIN_PARALLEL = 20_000  # items: below this, starting workers costs more than they save
MAX_WORKERS = 4
CHUNK = 1_000  # positions per task: a worker holds one range's rows, the parent 2 per worker
BATCH = 500  # items read per query inside a task
WORKER_NICE = 10
BUSY_TIMEOUT_MS = 5_000


def worker_count(items: int, workers: int | None) -> int:
    """How many worker processes an export of ``items`` items uses (1: none, in process).

    ``workers`` None picks: one per CPU up to ``MAX_WORKERS`` for ``MIN_PARALLEL`` items or
    more, else in process."""
    if workers is not None:
        return max(1, workers)
    if items < MIN_PARALLEL:
        return 1
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


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
    loop = asyncio.get_running_loop()
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start,
        initargs=(path,),
    )
    starts = iter(range(0, positions, CHUNK))
    running: deque[asyncio.Future[tuple[bytes, int, int, int]]] = deque()

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            end = min(positions, start + CHUNK)
            running.append(loop.run_in_executor(pool, export_range, name, split, fmt, start, end))

    done = 0
    try:
        for _ in range(2 * workers):
            submit()
        while running:
            found = await running.popleft()
            submit()
            done += found[3]
            if progress is not None:
                progress(done, max(total, done))
            yield found
    finally:
        for future in running:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


# -- in the worker process ------------------------------------------------------------------------

_conn: sqlite3.Connection | None = None


def _start(path: str) -> None:
    global _conn
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
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
        return b"", 0, 0, 0  # deleted meanwhile: the parent's count of items tells
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
    links = None
    if stored.record.previous_response_id is not None:
        found = read_snapshot(conn, chain, stored.record.id)
        links = found[0] if found is not None else None
    built = build_example(stored, links)
    return built if isinstance(built, Example) else None
