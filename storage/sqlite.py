"""``SQLiteStore``: the default store, one SQLite file in WAL mode.

Connections: one writer (all writes, ``BEGIN IMMEDIATE`` per batch, serialised by a lock) and
one read-only reader, each an aiosqlite connection with its own thread; migrations run on a
short-lived connection of their own. Captures appended for deferred indexing go to plain files
beside the database, in ``NAME.spool`` (``append_spool``, ``storage.spool``). Durability:
``synchronous=NORMAL`` in WAL mode, so a committed batch survives a process crash (kill -9) and
the file never corrupts; a power loss may roll back the last commits. The database file is
created with mode 0600 (SQLite gives its ``-wal`` and ``-shm`` files the same mode). ``close()``
must be awaited: since aiosqlite 0.22 an unclosed connection keeps the process from exiting.

Request bodies are stored content-addressed (see ``storage._blobs``): repeated system prompts,
tool lists and conversation prefixes are kept once. Data of 4 KiB or more (large segments,
response bodies, SSE transcripts) is deflated when that saves at least 10 %.

Statements that return rows always go through ``execute_fetchall``: a cursor left unread keeps
its read snapshot open, and the next ``BEGIN IMMEDIATE`` then fails with SQLITE_BUSY_SNAPSHOT.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aiosqlite

from storage import _sqlite_datasets, _sqlite_read, _sqlite_search, migrations, spool
from storage._rows import (
    CAPTURE_COLUMNS,
    EncodedBatch,
    encode_batch,
)
from storage._sqlite_datasets import DatasetTables
from storage._sqlite_documents import DocumentTables
from storage._sqlite_jobs import JobTables
from storage._sqlite_queries import CaptureQueries
from storage._store_reads import ReadSQL, SharedReads
from storage.datasets import DatasetExists
from storage.errors import StoreBusy, StoreError, StoreFull, StoreUnavailable
from storage.models import CaptureRecord
from storage.query import QueryError

T = TypeVar("T")
_SQLITE_FULL = 13
_SQLITE_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
# PERM, READONLY, IOERR, CORRUPT, CANTOPEN, NOTADB, NOMEM, AUTH
_SQLITE_UNAVAILABLE_CODES = {3, 7, 8, 10, 11, 14, 23, 26}
_MAX_PARAMS = 500  # ids per IN (...) query
_ENCODE_CHUNK = 25  # records encoded between two yields to the event loop

_INSERT_CAPTURE = (
    f"INSERT OR IGNORE INTO captures ({', '.join(CAPTURE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in CAPTURE_COLUMNS)})"
)
_UPSERT_BLOB = (
    "INSERT INTO blobs (hash, refs, codec, size, data) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (hash) DO UPDATE SET refs = refs + excluded.refs"
)
_INSERT_TAG = "INSERT OR IGNORE INTO capture_tags (seq, key, value) VALUES (?, ?, ?)"


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Turn sqlite3 / aiosqlite errors into ``StoreError`` subclasses."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        message = f"{getattr(exc, 'sqlite_errorname', type(exc).__name__)}: {exc}"
        if primary == _SQLITE_FULL:
            raise StoreFull(message) from exc
        if primary in _SQLITE_BUSY_CODES:
            raise StoreBusy(message) from exc
        if primary in _SQLITE_UNAVAILABLE_CODES or "closed" in str(exc):
            raise StoreUnavailable(message) from exc
        raise StoreError(message) from exc
    except (QueryError, DatasetExists):
        raise
    except ValueError as exc:  # aiosqlite: "Connection closed", "no active connection"
        if "closed" in str(exc) or "no active connection" in str(exc):
            raise StoreUnavailable(f"connection closed: {exc}") from exc
        raise StoreError(str(exc)) from exc
    except OSError as exc:  # creating the database file
        raise StoreUnavailable(f"cannot open database: {exc.strerror or exc}") from exc


def _create_private_file(path: str) -> None:
    """Create an empty database file with mode 0600 unless it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _encode_chunk(records: Sequence[CaptureRecord]) -> EncodedBatch:
    try:
        return encode_batch(records)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise StoreError(f"cannot encode capture batch: {exc}") from exc


def encode_records(records: Sequence[CaptureRecord]) -> list[EncodedBatch]:
    """``records`` encoded for ``write_encoded`` (``StoreError`` when one cannot be)."""
    return [_encode_chunk(records)] if records else []


# The writer connection's settings, in this order (page_size only matters for a new file).
_WRITER_PRAGMAS = (
    # New files only: 8 KiB pages pack ~3 KiB capture rows with ~20 % less waste.
    "page_size = 8192",
    "journal_mode = WAL",
    "synchronous = NORMAL",
    "foreign_keys = ON",
    # Deleted content is overwritten with zeros, not just unlinked (hard delete).
    "secure_delete = ON",
    "journal_size_limit = 67108864",
    # 2 MiB: the writer only appends; a 16 MiB cache measured as a steady RSS climb
    # in the T16 soak (bench/soak.py) with no gain in write throughput.
    "cache_size = -2048",
)


def _append(writer: spool.SpoolWriter, payloads: Sequence[bytes], stored: int | None) -> None:
    if stored is not None:
        writer.rotate_if_read(stored)
    writer.append(payloads)


async def _in_thread_to_the_end(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a thread and wait for it to finish even when cancelled meanwhile
    (then re-raise the cancellation): a spool write is not left running behind its caller."""
    future = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


def _max_page_count(conn: sqlite3.Connection, max_bytes: int) -> None:
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size)}").fetchall()


def open_sync_writer(
    path: str, *, busy_timeout_s: float = 5.0, max_bytes: int | None = None
) -> sqlite3.Connection:
    """A second writing connection to a store's file, set up like the store's own writer
    (for the capture indexer's process, ``proxy.indexer``). The file must exist."""
    if not os.path.exists(path):
        raise sqlite3.OperationalError(f"unable to open database file {path!r}")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}").fetchall()
        for pragma in _WRITER_PRAGMAS:
            conn.execute(f"PRAGMA {pragma}").fetchall()
        if max_bytes is not None:
            _max_page_count(conn, max_bytes)
    except BaseException:
        conn.close()
        raise
    return conn


def write_encoded(
    conn: sqlite3.Connection,
    batches: list[EncodedBatch],
    records: Sequence[CaptureRecord],
    *,
    spool_position: int | None = None,
) -> None:
    """One transaction for all ``batches``; ids already stored are skipped (idempotent).

    New captures are added to the full-text index in the same transaction, and with
    ``spool_position`` the spool position they were read up to is recorded in it
    (``storage.spool``).
    """
    by_id = {record.id: record for record in records}
    conn.execute("BEGIN IMMEDIATE")
    try:
        ids = [c.id for batch in batches for c in batch.captures]
        stored: set[str] = set()
        for start in range(0, len(ids), _MAX_PARAMS):
            chunk = ids[start : start + _MAX_PARAMS]
            marks = ", ".join("?" for _ in chunk)
            rows = conn.execute(f"SELECT id FROM captures WHERE id IN ({marks})", chunk)
            stored.update(row[0] for row in rows.fetchall())
        for batch in batches:
            new = [c for c in batch.captures if c.id not in stored]
            if not new:
                continue
            stored.update(c.id for c in new)
            # Reference counts only for captures really inserted, so a delete can collect
            # unused blobs.
            refs = Counter(digest for capture in new for digest in capture.digests)
            blob_rows = [(digest, n, *batch.blobs[digest]) for digest, n in refs.items()]
            if blob_rows:
                conn.executemany(_UPSERT_BLOB, blob_rows)
            conn.executemany(_INSERT_CAPTURE, [c.row for c in new])
            # The new rows' seqs, looked up once for the tags and the index (not per tag row).
            seqs = _seqs(conn, [c.id for c in new])
            tag_rows = [(seqs[cid], k, v) for c in new for cid, k, v in c.tags if cid in seqs]
            if tag_rows:
                conn.executemany(_INSERT_TAG, tag_rows)
            _sqlite_search.index_records(conn, [by_id[c.id] for c in new], seqs)
        if spool_position is not None:
            spool.store_position(conn, spool_position)
        conn.execute("COMMIT")
    except BaseException:
        # Some errors (SQLITE_FULL) end the transaction already; then ROLLBACK fails.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _seqs(conn: sqlite3.Connection, ids: list[str]) -> dict[str, int]:
    """capture id -> seq for ``ids`` (all stored)."""
    seqs: dict[str, int] = {}
    for start in range(0, len(ids), _MAX_PARAMS):
        chunk = ids[start : start + _MAX_PARAMS]
        marks = ", ".join("?" for _ in chunk)
        rows = conn.execute(f"SELECT id, seq FROM captures WHERE id IN ({marks})", chunk)
        seqs.update(rows.fetchall())
    return seqs


def _migrate_sync(path: str, busy_timeout_s: float) -> list[str]:
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        return migrations.migrate(conn)
    finally:
        conn.close()


class SQLiteStore(SharedReads, CaptureQueries, DatasetTables, JobTables, DocumentTables):
    """Capture storage in one SQLite file. See the module docstring for the guarantees."""

    READS = ReadSQL(
        list_page=_sqlite_read.list_page,
        get_one=_sqlite_read.get_one,
        chain=_sqlite_read.chain,
        count_where=_sqlite_read.count_where,
        time_quantile=_sqlite_read.time_quantile,
        captures_after=_sqlite_datasets.captures_after,
        dataset_row=_sqlite_datasets.dataset_row,
        dataset_items=_sqlite_datasets.items,
        dataset_pairs=_sqlite_datasets.pairs,
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 5.0,
        max_bytes: int | None = None,
    ) -> None:
        """``max_bytes`` caps the database file size (writes past it raise ``StoreFull``)."""
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise ValueError("SQLiteStore needs a file path")
        self.busy_timeout_s = busy_timeout_s
        self.max_bytes = max_bytes
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._open_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._spool_lock = asyncio.Lock()
        self._spool: spool.SpoolWriter | None = None  # opened by the first append_spool
        # Where the indexer has stored the spool up to (set by whoever runs it): a segment
        # that is all stored is closed early, so the indexer can erase it.
        self.spool_stored: Callable[[], int] | None = None
        self._closed = False

    async def __aenter__(self) -> SQLiteStore:
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
        """Open the connections (done lazily by every other method). Idempotent."""
        await self._connections()

    async def _connections(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        if self._closed:
            raise StoreUnavailable("store is closed")
        if self._writer is None or self._reader is None:
            async with self._open_lock:
                if self._closed:
                    raise StoreUnavailable("store is closed")
                if self._writer is None or self._reader is None:
                    with translated_errors():
                        await self._open_connections()
        assert self._writer is not None and self._reader is not None
        return self._writer, self._reader

    async def _open_connections(self) -> None:
        await asyncio.to_thread(_create_private_file, self.path)
        timeout_ms = int(self.busy_timeout_s * 1000)
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in (f"busy_timeout = {timeout_ms}", *_WRITER_PRAGMAS):
                await writer.execute_fetchall(f"PRAGMA {pragma}")
            await self._apply_max_bytes(writer)
            reader = await aiosqlite.connect(self.path, isolation_level=None)
        except BaseException:
            await writer.close()
            raise
        try:
            await reader.execute_fetchall(f"PRAGMA busy_timeout = {timeout_ms}")
            await reader.execute_fetchall("PRAGMA query_only = ON")
        except BaseException:
            await reader.close()
            await writer.close()
            raise
        self._writer, self._reader = writer, reader

    async def _apply_max_bytes(self, writer: aiosqlite.Connection) -> None:
        if self.max_bytes is None:
            return
        rows = list(await writer.execute_fetchall("PRAGMA page_size"))
        pages = max(1, self.max_bytes // int(rows[0][0]))
        await writer.execute_fetchall(f"PRAGMA max_page_count = {pages}")

    async def set_max_bytes(self, max_bytes: int | None) -> None:
        """Change the size cap of an open store (``None``: SQLite's own limit)."""
        writer, _ = await self._connections()
        async with self._write_lock:
            self.max_bytes = max_bytes
            with translated_errors():
                if max_bytes is None:
                    await writer.execute_fetchall("PRAGMA max_page_count = 4294967294")
                else:
                    await self._apply_max_bytes(writer)

    async def close(self) -> None:
        if self._closed:
            return
        async with self._open_lock, self._write_lock, self._read_lock, self._spool_lock:
            self._closed = True
            if self._spool is not None:
                self._spool.close()
                self._spool = None
            connections = [c for c in (self._reader, self._writer) if c is not None]
            self._writer = self._reader = None
            for conn in connections:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.close()

    # -- schema ------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        await self._connections()  # creates the file with the right mode, enables WAL
        with translated_errors():
            return await asyncio.to_thread(_migrate_sync, self.path, self.busy_timeout_s)

    async def pending_migrations(self) -> list[str]:
        _, reader = await self._connections()
        async with self._read_lock:
            with translated_errors():
                exists = list(
                    await reader.execute_fetchall(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
                    )
                )
                applied: list[str] = []
                if exists:
                    rows = await reader.execute_fetchall("SELECT name FROM _migrations")
                    applied = [row[0] for row in rows]
        return migrations.pending_names(applied)

    # -- writes ------------------------------------------------------------------------------

    async def write_batch(self, records: Sequence[CaptureRecord]) -> None:
        if not records:
            return
        writer, _ = await self._connections()
        # Encode on the event loop's own thread, a chunk at a time with a yield in between,
        # then run the whole transaction in ONE call on aiosqlite's thread. Each thread
        # hand-off costs ~100 us of CPU here, and an encoder thread holding the GIL stalls the
        # relay for up to the 5 ms switch interval: both measured as a large share of the
        # proxy's CPU with capture on (bench/RESULTS.md). SQLite itself runs GIL-free.
        encoded: list[EncodedBatch] = []
        for start in range(0, len(records), _ENCODE_CHUNK):
            if start:
                await asyncio.sleep(0)
            encoded.append(_encode_chunk(records[start : start + _ENCODE_CHUNK]))
        async with self._write_lock:
            with translated_errors():
                # aiosqlite 0.22's Connection._execute runs fn on the connection's thread
                # (pinned in requirements/*.txt; tests cover this path).
                await writer._execute(write_encoded, writer._conn, encoded, records)  # type: ignore[no-untyped-call]

    async def append_spool(self, payloads: Sequence[bytes]) -> None:
        """Append packed exchanges to the store's spool in one write (``storage.spool``).

        The spool is plain files with a lock of its own: an append never waits for the
        database. Errors: ``StoreFull`` (no space left), else ``StoreUnavailable``; their
        ``written`` says how many of the first payloads were spooled all the same.
        """
        if not payloads:
            return
        async with self._spool_lock:
            if self._closed:
                raise StoreUnavailable("store is closed")
            try:
                if self._spool is None:
                    await self._open_spool()
                assert self._spool is not None
                stored = self.spool_stored() if self.spool_stored is not None else None
                await _in_thread_to_the_end(_append, self._spool, payloads, stored)
            except OSError as exc:
                message = f"capture spool: {exc.strerror or exc}"
                error: StoreError = (
                    StoreFull(message)
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                    else StoreUnavailable(message)
                )
                error.written = getattr(exc, "written", 0)
                raise error from exc

    async def open_spool(self) -> None:
        """Open the spool for appending now (else the first append does): a second process
        on the same database fails here, with ``StoreUnavailable``."""
        async with self._spool_lock:
            if self._spool is None:
                try:
                    await self._open_spool()
                except OSError as exc:
                    raise StoreUnavailable(f"capture spool: {exc.strerror or exc}") from exc

    async def _open_spool(self) -> None:
        floor = await self._read(spool.stored_position)
        self._spool = await asyncio.to_thread(
            spool.SpoolWriter, spool.spool_dir(self.path), floor=floor
        )

    async def erase_spool(self) -> None:
        """Close the spool and erase its files (zeros first), still holding its lock: call only
        when the indexer has stored everything in it (a graceful stop does, once drained)."""
        async with self._spool_lock:
            if self._spool is not None:
                writer, self._spool = self._spool, None
                await asyncio.to_thread(writer.close, erase_all=True)

    @property
    def spool_end(self) -> int | None:
        """The spool position after the last frame appended (None before the first)."""
        return self._spool.end if self._spool is not None else None

    @staticmethod
    async def _rollback(conn: aiosqlite.Connection) -> None:
        # Some errors (SQLITE_FULL, cancellation after COMMIT was queued) end the transaction
        # already; ROLLBACK then fails with "no transaction is active", which is fine.
        with contextlib.suppress(sqlite3.Error, ValueError):
            await conn.execute("ROLLBACK")

    # -- reads -------------------------------------------------------------------------------

    # -- finding and curating (storage.query; SQL in _sqlite_read / _sqlite_edit) -------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one read transaction on the reader's thread."""
        _, reader = await self._connections()
        async with self._read_lock:
            with translated_errors():
                result: T = await reader._execute(  # type: ignore[no-untyped-call]
                    _sqlite_read.read_snapshot, reader._conn, fn, *args
                )
        return result

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the writer's thread (``fn`` owns its transaction)."""
        writer, _ = await self._connections()
        async with self._write_lock:
            with translated_errors():
                result: T = await writer._execute(fn, writer._conn, *args)  # type: ignore[no-untyped-call]
        return result

    async def install_secret(self) -> bytes:
        """The install's random 32-byte secret, created on first use (needs migration m002)."""
        writer, _ = await self._connections()
        async with self._write_lock:
            with translated_errors():
                await writer.execute(
                    "INSERT OR IGNORE INTO install (id, secret, created_at) VALUES (1, ?, ?)",
                    (secrets.token_bytes(32), time.time()),
                )
                rows = list(await writer.execute_fetchall("SELECT secret FROM install"))
        return bytes(rows[0][0])

    async def ping(self) -> None:
        _, reader = await self._connections()
        async with self._read_lock:
            with translated_errors():
                await reader.execute_fetchall("SELECT 1")
