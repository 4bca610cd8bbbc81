"""``PostgresStore``'s dataset snapshots (storage.datasets; migration m004; private).

The same behaviour as ``storage._sqlite_datasets``; the snapshot tables live in the shared
database, so a dataset built by one replica is listed and exported by every other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import orjson

from storage._pg_read import SELECT_COLUMNS, check_search, decode_rows, select_sql
from storage._sqlite_datasets import dataset_from_json
from storage.datasets import Dataset, DatasetExists, DatasetItem, DatasetPair, Split
from storage.query import CaptureFilter, StoredCapture

T = TypeVar("T")
Call = Callable[..., Coroutine[Any, Any, T]]
_STALE_BUILD_S = 24 * 3600


async def _begin(conn: Any, name: str) -> int:
    # A build that died with its process leaves a 'building' row: an older one is stale.
    await conn.execute(
        "DELETE FROM datasets WHERE name = $1 AND state = 'building' AND created_at < $2",
        name,
        time.time() - _STALE_BUILD_S,
    )
    handle = await conn.fetchval(
        "INSERT INTO datasets (name, state, created_at) VALUES ($1, 'building', $2)"
        " ON CONFLICT (name) DO NOTHING RETURNING id",
        name,
        time.time(),
    )
    if handle is None:
        raise DatasetExists(f"a dataset named {name!r} exists already")
    return int(handle)


async def _add(
    conn: Any, handle: int, items: Sequence[DatasetItem], pairs: Sequence[DatasetPair]
) -> None:
    if items:
        await conn.executemany(
            "INSERT INTO dataset_items (dataset_id, position, capture_id, split, content_hash)"
            " VALUES ($1, $2, $3, $4, $5)",
            [
                (handle, i.position, i.capture_id, i.split, bytes.fromhex(i.content_hash))
                for i in items
            ],
        )
    if pairs:
        await conn.executemany(
            "INSERT INTO dataset_pairs"
            " (dataset_id, position, split, kind, preferred_id, rejected_id)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [(handle, p.position, p.split, p.kind, p.preferred_id, p.rejected_id) for p in pairs],
        )


async def _status(conn: Any, sql: str, *params: Any) -> int:
    status: str = await conn.execute(sql, *params)
    return int(status.rsplit(" ", 1)[-1])


async def _list(conn: Any) -> list[bytes]:
    rows = await conn.fetch(
        "SELECT info FROM datasets WHERE state = 'ready' ORDER BY created_at DESC, id DESC"
    )
    return [row[0] for row in rows]


async def dataset_row(conn: Any, name: str) -> tuple[int, bytes] | None:
    row = await conn.fetchrow(
        "SELECT id, info FROM datasets WHERE name = $1 AND state = 'ready'", name
    )
    return (int(row[0]), bytes(row[1])) if row else None


async def items(
    conn: Any, dataset_id: int, split: Split | None, after: int, limit: int
) -> list[tuple[DatasetItem, StoredCapture | None]]:
    sql = (
        f"SELECT i.position, i.capture_id, i.split, i.content_hash, {SELECT_COLUMNS}"
        " FROM dataset_items i LEFT JOIN captures c ON c.id = i.capture_id"
        " WHERE i.dataset_id = $1 AND i.position > $2"
    )
    params: list[Any] = [dataset_id, after]
    if split is not None:
        params.append(split)
        sql += f" AND i.split = ${len(params)}"
    params.append(limit)
    rows = await conn.fetch(sql + f" ORDER BY i.position LIMIT ${len(params)}", *params)
    found = await decode_rows(conn, [tuple(row)[4:] for row in rows if row[4] is not None])
    by_id = {stored.record.id: stored for stored in found}
    return [
        (DatasetItem(row[0], row[1], row[2], bytes(row[3]).hex()), by_id.get(row[1]))
        for row in rows
    ]


async def pairs(
    conn: Any, dataset_id: int, split: Split | None, after: int, limit: int
) -> list[tuple[DatasetPair, StoredCapture | None, StoredCapture | None]]:
    sql = (
        "SELECT position, split, kind, preferred_id, rejected_id FROM dataset_pairs"
        " WHERE dataset_id = $1 AND position > $2"
    )
    params: list[Any] = [dataset_id, after]
    if split is not None:
        params.append(split)
        sql += f" AND split = ${len(params)}"
    params.append(limit)
    rows = await conn.fetch(sql + f" ORDER BY position LIMIT ${len(params)}", *params)
    ids = sorted({row[3] for row in rows} | {row[4] for row in rows})
    by_id: dict[str, StoredCapture] = {}
    if ids:
        captured = await conn.fetch(
            f"SELECT {SELECT_COLUMNS} FROM captures c WHERE c.id = any($1::text[])", ids
        )
        by_id.update((s.record.id, s) for s in await decode_rows(conn, captured))
    return [
        (DatasetPair(row[0], row[1], row[2], row[3], row[4]), by_id.get(row[3]), by_id.get(row[4]))
        for row in rows
    ]


async def captures_after(
    conn: Any, where: CaptureFilter, after_seq: int, limit: int
) -> tuple[list[StoredCapture], int]:
    check_search(where)
    sql, params = select_sql(where, order="asc", limit=limit, after_seq=after_seq)
    rows = await conn.fetch(sql, *params)
    return await decode_rows(conn, rows), (int(rows[-1][0]) if rows else after_seq)


class PgDatasetTables:
    """Mixin: needs ``_read(fn, *args)`` and ``_write(fn, *args)`` from the store."""

    async def _read(self, fn: Call[T], *args: Any) -> T:
        raise NotImplementedError

    async def _write(self, fn: Call[T], *args: Any) -> T:
        raise NotImplementedError

    async def begin_dataset(self, name: str) -> int:
        return await self._write(_begin, name)

    async def add_dataset_items(
        self, handle: int, items: Sequence[DatasetItem], pairs: Sequence[DatasetPair] = ()
    ) -> None:
        if items or pairs:
            await self._write(_add, handle, items, pairs)

    async def finish_dataset(self, handle: int, dataset: Dataset) -> None:
        await self._write(
            _status,
            "UPDATE datasets SET state = 'ready', info = $1, created_at = $2 WHERE id = $3",
            orjson.dumps(dataset.to_json()),
            dataset.created_at,
            handle,
        )

    async def abort_dataset(self, handle: int) -> None:
        await self._write(_status, "DELETE FROM datasets WHERE id = $1", handle)

    async def list_datasets(self) -> list[Dataset]:
        return [dataset_from_json(info) for info in await self._read(_list)]

    async def get_dataset(self, name: str) -> Dataset | None:
        found = await self._read(dataset_row, name)
        return dataset_from_json(found[1]) if found else None

    async def delete_dataset(self, name: str) -> bool:
        changed = await self._write(
            _status, "DELETE FROM datasets WHERE name = $1 AND state = 'ready'", name
        )
        return changed > 0
