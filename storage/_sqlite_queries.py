"""``SQLiteStore``'s finding, curating and deleting methods (storage.query; private).

The SQL lives in ``_sqlite_read`` (one read snapshot per call) and ``_sqlite_edit`` (the writer);
this mixin only sequences the calls, e.g. a long delete as one transaction per chunk so captures
keep being written in between.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from storage import _sqlite_edit, _sqlite_read
from storage.query import (
    CaptureFilter,
    CapturePatch,
    Stats,
    StoredCapture,
)

T = TypeVar("T")


class StoreCalls:
    """What the mixins need from the store: its path and one call on each connection."""

    path: str

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError


class CaptureQueries(StoreCalls):
    """Curation, deletes and stats; the plain reads are in ``storage._store_reads``."""

    async def update_capture(self, capture_id: str, patch: CapturePatch) -> StoredCapture | None:
        return await self._write(_sqlite_edit.update_one, capture_id, patch)

    async def update_where(self, where: CaptureFilter, patch: CapturePatch) -> int:
        return await self._write(_sqlite_edit.update_where, where, patch)

    async def delete_capture(self, capture_id: str) -> bool:
        return await self._delete([capture_id]) > 0

    async def delete_where(self, where: CaptureFilter) -> int:
        return await self._delete(await self._read(_sqlite_edit.matching_ids, where))

    async def purge_before(self, cutoff: float) -> int:
        return await self.delete_where(CaptureFilter(until=cutoff))

    async def _delete(self, ids: Sequence[str]) -> int:
        # A transaction per chunk, so captures keep being written during a long purge.
        deleted = 0
        touched: set[int] = set()
        for start in range(0, len(ids), _sqlite_edit.DELETE_CHUNK):
            chunk = ids[start : start + _sqlite_edit.DELETE_CHUNK]
            count, parts = await self._write(_sqlite_edit.delete_chunk, chunk)
            deleted += count
            touched |= parts
        # Then the deleted rows leave the index pages (a partition per turn) and the WAL.
        for part in sorted(touched):
            await self._write(_sqlite_edit.optimize_partition, part)
        if deleted:
            await self._write(_sqlite_edit.checkpoint_truncate)
        return deleted

    async def stats(self, where: CaptureFilter | None = None) -> Stats:
        values = await self._read(_sqlite_read.stats_rows, where or CaptureFilter())
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.path.getsize(self.path + suffix)
        return Stats(store_bytes=size, **values)
