"""``PostgresStore``: captures in a Postgres database shared by every replica (asyncpg).

Selected by ``--database postgresql://user@host/db`` (the optional ``[postgres]`` extra). The
store owns an asyncpg pool, created on first use and released by ``close()``. Query-string
parameters other than libpq's are sent as server settings, e.g. ``?search_path=stillroom``.

* Schema and migrations: ``storage._pg_migrations`` (named, recorded in ``_migrations``, one
  transaction each, serialised across replicas by an advisory lock).
* Writes: one transaction per batch, idempotent (``ON CONFLICT (id) DO NOTHING``), blob
  references and tags only for rows really inserted (``storage._pg_edit``). Ids are UUIDv7
  made by each process, so replicas never collide.
* Training jobs and their events: ``storage._pg_jobs`` (row locks keep a finished job
  finished and a job's event cursor gap-free with several replicas writing).
* Reads: one read-only ``REPEATABLE READ`` transaction per call (``storage._pg_read``), the
  same filters, pages and cursors as SQLite; full-text search uses a ``tsvector`` column.
* Deletes remove rows at once; Postgres has no ``secure_delete``, see ``storage._pg_edit`` for
  what VACUUM does and does not do.
* Errors: asyncpg and socket errors become ``storage.errors`` (``StoreUnavailable`` when the
  server cannot be reached or the connection was lost, ``StoreBusy`` for serialisation
  failures, deadlocks, lock and statement timeouts, ``StoreFull`` for a full disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import asyncpg

from storage import _pg_datasets, _pg_edit, _pg_migrations, _pg_read
from storage._pg_datasets import PgDatasetTables
from storage._pg_documents import PgDocumentTables
from storage._pg_jobs import PgJobTables
from storage._rows import EncodedBatch, encode_batch
from storage._store_reads import ReadSQL, SharedReads
from storage.datasets import DatasetExists
from storage.errors import StoreBusy, StoreError, StoreFull, StoreUnavailable
from storage.models import CaptureRecord
from storage.query import (
    CaptureFilter,
    CapturePatch,
    QueryError,
    Stats,
    StoredCapture,
)
from storage.text import search_text

T = TypeVar("T")
_ENCODE_CHUNK = 25
_BUSY_STATES = {"40001", "40P01", "55P03", "57014"}  # serialization, deadlock, lock, timeout
_UNAVAILABLE_STATES = {"53300", "3D000", "57P01", "57P02", "57P03", "57P04"}


def _classify(exc: BaseException) -> type[StoreError] | None:
    """The ``StoreError`` class for a driver error, or None when it is not one of ours."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state == "53100":
            return StoreFull
        if state in _BUSY_STATES:
            return StoreBusy
        if state in _UNAVAILABLE_STATES or state[:2] in ("08", "28"):
            return StoreUnavailable
        return StoreError
    if isinstance(exc, asyncpg.exceptions.ConnectionDoesNotExistError):
        return StoreUnavailable
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        if "closed" in text or "closing" in text or "terminat" in text:
            return StoreUnavailable
        return StoreError
    if isinstance(exc, OSError | TimeoutError):
        return StoreUnavailable
    if isinstance(exc, ValueError | TypeError | OverflowError):  # values asyncpg cannot encode
        return StoreError
    return None


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except (QueryError, DatasetExists, StoreError):
        raise
    except Exception as exc:
        kind = _classify(exc)
        if kind is None:
            raise
        raise kind(f"postgres: {type(exc).__name__}: {exc}") from exc


def _texts(records: Sequence[CaptureRecord]) -> dict[str, str]:
    out: dict[str, str] = {}
    for record in records:
        prompt, answer = search_text(record.endpoint, record.request_body, record.response)
        if prompt or answer:
            out[record.id] = f"{prompt}\n{answer}".replace("\x00", " ")
    return out


def _encode(records: Sequence[CaptureRecord]) -> tuple[EncodedBatch, dict[str, str]]:
    try:
        return encode_batch(records), _texts(records)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise StoreError(f"cannot encode capture batch: {exc}") from exc


class PostgresStore(SharedReads, PgDatasetTables, PgJobTables, PgDocumentTables):
    """Capture storage in Postgres. See the module docstring for the guarantees."""

    READS = ReadSQL(
        list_page=_pg_read.list_page,
        get_one=_pg_read.get_one,
        chain=_pg_read.chain,
        count_where=_pg_read.count_where,
        time_quantile=_pg_read.time_quantile,
        captures_after=_pg_datasets.captures_after,
        dataset_row=_pg_datasets.dataset_row,
        dataset_items=_pg_datasets.items,
        dataset_pairs=_pg_datasets.pairs,
    )

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 1,
        max_connections: int = 10,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 60.0,
    ) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("PostgresStore needs a postgresql:// URL")
        self.url = url
        self._min = min_connections
        self._max = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- connections -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool (done lazily by every other method). Idempotent."""
        await self._get_pool()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise StoreUnavailable("store is closed")
        if self._pool is None:
            async with self._open_lock:
                if self._closed:
                    raise StoreUnavailable("store is closed")
                if self._pool is None:
                    with _translated_errors():
                        self._pool = await asyncpg.create_pool(
                            self.url,
                            min_size=self._min,
                            max_size=self._max,
                            timeout=self._connect_timeout_s,
                            command_timeout=self._command_timeout_s,
                        )
        return self._pool

    async def close(self) -> None:
        if self._closed:
            return
        async with self._open_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except Exception:
                pool.terminate()

    async def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], args: Any, read: bool) -> T:
        pool = await self._get_pool()
        with _translated_errors():
            async with pool.acquire(timeout=self._connect_timeout_s) as conn:
                if read:
                    transaction = conn.transaction(isolation="repeatable_read", readonly=True)
                else:
                    transaction = conn.transaction()
                async with transaction:
                    result: T = await fn(conn, *args)
                    return result

    async def _read(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one read-only snapshot."""
        return await self._call(fn, args, True)

    async def _write(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one read-write transaction."""
        return await self._call(fn, args, False)

    # -- schema ------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        pool = await self._get_pool()
        with _translated_errors():
            async with pool.acquire(timeout=self._connect_timeout_s) as conn:
                return await _pg_migrations.migrate(conn)

    async def pending_migrations(self) -> list[str]:
        pool = await self._get_pool()
        with _translated_errors():
            async with pool.acquire(timeout=self._connect_timeout_s) as conn:
                done = await _pg_migrations.applied(conn)
        return _pg_migrations.pending_names(done)

    # -- writes ------------------------------------------------------------------------------

    async def write_batch(self, records: Sequence[CaptureRecord]) -> None:
        if not records:
            return
        batches: list[EncodedBatch] = []
        texts: dict[str, str] = {}
        for start in range(0, len(records), _ENCODE_CHUNK):
            if start:
                await asyncio.sleep(0)
            batch, chunk_texts = _encode(records[start : start + _ENCODE_CHUNK])
            batches.append(batch)
            texts.update(chunk_texts)
        # A repeated id in a later chunk is skipped by ON CONFLICT, as encode_batch does within.
        await self._write(_pg_edit.write_batches, batches, texts)

    # -- reads -------------------------------------------------------------------------------

    async def stats(self, where: CaptureFilter | None = None) -> Stats:
        values = await self._read(_pg_read.stats_rows, where or CaptureFilter())
        size = await self._read(_store_bytes)
        return Stats(store_bytes=size, **values)

    # -- curation and deletes ----------------------------------------------------------------

    async def update_capture(self, capture_id: str, patch: CapturePatch) -> StoredCapture | None:
        return await self._write(_pg_edit.update_one, capture_id, patch)

    async def update_where(self, where: CaptureFilter, patch: CapturePatch) -> int:
        return await self._write(_pg_edit.update_where, where, patch)

    async def delete_capture(self, capture_id: str) -> bool:
        return await self._delete([capture_id]) > 0

    async def delete_where(self, where: CaptureFilter) -> int:
        return await self._delete(await self._read(_pg_edit.matching_ids, where))

    async def purge_before(self, cutoff: float) -> int:
        return await self.delete_where(CaptureFilter(until=cutoff))

    async def _delete(self, ids: Sequence[str]) -> int:
        # A transaction per chunk, so captures keep being written during a long purge.
        deleted = 0
        for start in range(0, len(ids), _pg_edit.DELETE_CHUNK):
            chunk = ids[start : start + _pg_edit.DELETE_CHUNK]
            deleted += await self._write(_pg_edit.delete_chunk, chunk)
        return deleted

    # -- odds and ends -----------------------------------------------------------------------

    async def ping(self) -> None:
        await self._read(_select_one)

    async def install_secret(self) -> bytes:
        """The install's random 32-byte secret, created on first use (needs migration m002)."""
        return await self._write(_install_secret, secrets.token_bytes(32))


async def _select_one(conn: Any) -> None:
    await conn.fetchval("SELECT 1")


async def _store_bytes(conn: Any) -> int:
    size = await conn.fetchval(
        "SELECT pg_total_relation_size('captures') + pg_total_relation_size('blobs')"
        " + pg_total_relation_size('capture_tags')"
    )
    return int(size or 0)


async def _install_secret(conn: Any, fresh: bytes) -> bytes:
    await conn.execute(
        "INSERT INTO install (id, secret, created_at) VALUES (1, $1, $2)"
        " ON CONFLICT (id) DO NOTHING",
        fresh,
        time.time(),
    )
    return bytes(await conn.fetchval("SELECT secret FROM install WHERE id = 1"))
