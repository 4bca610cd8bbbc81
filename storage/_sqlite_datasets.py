"""``SQLiteStore``'s dataset snapshots (storage.datasets; schema m004; private)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import orjson

from storage import _sqlite_search
from storage._sqlite_queries import StoreCalls
from storage._sqlite_read import READ_COLUMNS, decode_rows, run_query, select_sql
from storage.datasets import (
    Dataset,
    DatasetExists,
    DatasetItem,
    DatasetPair,
    Split,
    TokenStats,
)
from storage.query import CaptureFilter, StoredCapture

_COLUMNS = ", ".join(f"c.{name}" for name in READ_COLUMNS)


def dataset_from_json(data: bytes) -> Dataset:
    raw = orjson.loads(data)
    return Dataset(
        name=raw["name"],
        created_at=raw["created_at"],
        spec=raw["spec"],
        content_hash=raw["content_hash"],
        counts=raw["counts"],
        considered=raw["considered"],
        rejected=raw["rejected"],
        tokens={
            split: TokenStats(
                examples=t["examples"],
                total=t["total"],
                min=t["min"],
                mean=t["mean"],
                max=t["max"],
                p95=t["p95"],
                answer_total=t["answer_total"],
                cost_per_epoch=t["estimated_cost_per_epoch"],
            )
            for split, t in raw["tokens"].items()
        },
        leakage=raw["leakage"],
        version=raw["version"],
    )


# -- sync SQL (run on a connection's thread) ----------------------------------------------------


def _begin(conn: sqlite3.Connection, name: str) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        # A build that died with its process leaves a 'building' row: an older one is stale.
        conn.execute(
            "DELETE FROM datasets WHERE name = ? AND state = 'building' AND created_at < ?",
            (name, time.time() - 24 * 3600),
        )
        try:
            cursor = conn.execute(
                "INSERT INTO datasets (name, state, created_at) VALUES (?, 'building', ?)",
                (name, time.time()),
            )
        except sqlite3.IntegrityError:
            raise DatasetExists(f"a dataset named {name!r} exists already") from None
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(cursor.lastrowid or 0)


def _add(
    conn: sqlite3.Connection,
    handle: int,
    items: Sequence[DatasetItem],
    pairs: Sequence[DatasetPair],
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT INTO dataset_items (dataset_id, position, capture_id, split, content_hash)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                (handle, i.position, i.capture_id, i.split, bytes.fromhex(i.content_hash))
                for i in items
            ],
        )
        conn.executemany(
            "INSERT INTO dataset_pairs"
            " (dataset_id, position, split, kind, preferred_id, rejected_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(handle, p.position, p.split, p.kind, p.preferred_id, p.rejected_id) for p in pairs],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _transaction(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        changed = conn.execute(sql, params).rowcount
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return changed


def _list(conn: sqlite3.Connection) -> list[bytes]:
    rows = conn.execute(
        "SELECT info FROM datasets WHERE state = 'ready' ORDER BY created_at DESC, id DESC"
    )
    return [row[0] for row in rows]


def dataset_row(conn: sqlite3.Connection, name: str) -> tuple[int, bytes] | None:
    row = conn.execute(
        "SELECT id, info FROM datasets WHERE name = ? AND state = 'ready'", (name,)
    ).fetchone()
    return (row[0], row[1]) if row else None


def items(
    conn: sqlite3.Connection, dataset_id: int, split: Split | None, after: int, limit: int
) -> list[tuple[DatasetItem, StoredCapture | None]]:
    sql = (
        f"SELECT i.position, i.capture_id, i.split, i.content_hash, {_COLUMNS}"
        " FROM dataset_items i LEFT JOIN captures c ON c.id = i.capture_id"
        " WHERE i.dataset_id = ? AND i.position > ?"
    )
    params: list[Any] = [dataset_id, after]
    if split is not None:
        sql += " AND i.split = ?"
        params.append(split)
    rows = conn.execute(sql + " ORDER BY i.position LIMIT ?", [*params, limit]).fetchall()
    found = decode_rows(conn, [row[4:] for row in rows if row[4] is not None])
    by_id = {stored.record.id: stored for stored in found}
    return [
        (DatasetItem(row[0], row[1], row[2], bytes(row[3]).hex()), by_id.get(row[1]))
        for row in rows
    ]


def pairs(
    conn: sqlite3.Connection, dataset_id: int, split: Split | None, after: int, limit: int
) -> list[tuple[DatasetPair, StoredCapture | None, StoredCapture | None]]:
    sql = (
        "SELECT position, split, kind, preferred_id, rejected_id FROM dataset_pairs"
        " WHERE dataset_id = ? AND position > ?"
    )
    params: list[Any] = [dataset_id, after]
    if split is not None:
        sql += " AND split = ?"
        params.append(split)
    rows = conn.execute(sql + " ORDER BY position LIMIT ?", [*params, limit]).fetchall()
    ids = sorted({row[3] for row in rows} | {row[4] for row in rows})
    by_id: dict[str, StoredCapture] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        captured = conn.execute(
            f"SELECT {_COLUMNS} FROM captures c WHERE c.id IN ({marks})", chunk
        ).fetchall()
        by_id.update((s.record.id, s) for s in decode_rows(conn, captured))
    return [
        (DatasetPair(row[0], row[1], row[2], row[3], row[4]), by_id.get(row[3]), by_id.get(row[4]))
        for row in rows
    ]


def captures_after(
    conn: sqlite3.Connection, where: CaptureFilter, after_seq: int, limit: int
) -> tuple[list[StoredCapture], int]:
    """Up to ``limit`` captures past ``after_seq`` in stored order, and the last one's seq."""
    rows = rows_after(conn, where, after_seq, limit)
    return decode_rows(conn, rows), (rows[-1][0] if rows else after_seq)


def rows_after(
    conn: sqlite3.Connection, where: CaptureFilter, after_seq: int, limit: int
) -> list[Any]:
    """Up to ``limit`` undecoded rows (``seq`` first) of captures past ``after_seq``, in order."""
    sql, params = select_sql(
        where,
        order="asc",
        limit=limit,
        search_parts=_sqlite_search.partitions(conn),
        after_seq=after_seq,
    )
    return run_query(conn, sql, params)


# -- the mixin ----------------------------------------------------------------------------------


class DatasetTables(StoreCalls):
    async def begin_dataset(self, name: str) -> int:
        return await self._write(_begin, name)

    async def add_dataset_items(
        self, handle: int, items: Sequence[DatasetItem], pairs: Sequence[DatasetPair] = ()
    ) -> None:
        if items or pairs:
            await self._write(_add, handle, items, pairs)

    async def finish_dataset(self, handle: int, dataset: Dataset) -> None:
        await self._write(
            _transaction,
            "UPDATE datasets SET state = 'ready', info = ?, created_at = ? WHERE id = ?",
            (orjson.dumps(dataset.to_json()), dataset.created_at, handle),
        )

    async def abort_dataset(self, handle: int) -> None:
        await self._write(_transaction, "DELETE FROM datasets WHERE id = ?", (handle,))

    async def list_datasets(self) -> list[Dataset]:
        return [dataset_from_json(info) for info in await self._read(_list)]

    async def get_dataset(self, name: str) -> Dataset | None:
        found = await self._read(dataset_row, name)
        return dataset_from_json(found[1]) if found else None

    async def delete_dataset(self, name: str) -> bool:
        changed = await self._write(
            _transaction, "DELETE FROM datasets WHERE name = ? AND state = 'ready'", (name,)
        )
        return changed > 0
