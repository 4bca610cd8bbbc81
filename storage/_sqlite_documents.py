"""``SQLiteStore``'s documents and items (storage.documents; schema m006; private)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import orjson

from storage._sqlite_jobs import _in_transaction
from storage._sqlite_queries import StoreCalls
from storage.documents import Document, Item, VersionConflict

_COLUMNS = "kind, id, version, created_at, updated_at, body"


def document_from_row(row: Sequence[Any]) -> Document:
    return Document(row[0], row[1], int(row[2]), row[3], row[4], orjson.loads(row[5]))


def _get(conn: sqlite3.Connection, kind: str, doc_id: str) -> Document | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM documents WHERE kind = ? AND id = ?", (kind, doc_id)
    ).fetchone()
    return document_from_row(row) if row else None


def _put(
    conn: sqlite3.Connection,
    kind: str,
    doc_id: str,
    body: dict[str, Any],
    if_version: int | None,
) -> Document:
    current = _get(conn, kind, doc_id)
    found = current.version if current is not None else 0
    if if_version is not None and if_version != found:
        raise VersionConflict(kind, doc_id, if_version, found)
    now = time.time()
    text = orjson.dumps(body).decode()
    if current is None:
        conn.execute(
            f"INSERT INTO documents ({_COLUMNS}) VALUES (?, ?, 1, ?, ?, ?)",
            (kind, doc_id, now, now, text),
        )
        return Document(kind, doc_id, 1, now, now, body)
    conn.execute(
        "UPDATE documents SET version = ?, updated_at = ?, body = ? WHERE kind = ? AND id = ?",
        (found + 1, now, text, kind, doc_id),
    )
    return Document(kind, doc_id, found + 1, current.created_at, now, body)


def _list(
    conn: sqlite3.Connection, kind: str, after: str | None, limit: int
) -> tuple[list[Document], bool]:
    sql = f"SELECT {_COLUMNS} FROM documents WHERE kind = ?"
    params: list[Any] = [kind]
    if after is not None:
        sql += " AND id < ?"
        params.append(after)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", [*params, limit + 1]).fetchall()
    return [document_from_row(row) for row in rows[:limit]], len(rows) > limit


def _delete(conn: sqlite3.Connection, kind: str, doc_id: str) -> bool:
    conn.execute("DELETE FROM document_items WHERE kind = ? AND parent = ?", (kind, doc_id))
    cursor = conn.execute("DELETE FROM documents WHERE kind = ? AND id = ?", (kind, doc_id))
    return cursor.rowcount > 0


def _changed(conn: sqlite3.Connection, kind: str) -> tuple[float, int]:
    row = conn.execute(
        "SELECT MAX(updated_at), COUNT(*) FROM documents WHERE kind = ?", (kind,)
    ).fetchone()
    return (float(row[0] or 0.0), int(row[1]))


def _add_items(
    conn: sqlite3.Connection, kind: str, parent: str, bodies: Sequence[dict[str, Any]]
) -> int:
    now = time.time()
    conn.executemany(
        "INSERT INTO document_items (kind, parent, created_at, body) VALUES (?, ?, ?, ?)",
        [(kind, parent, now, orjson.dumps(body).decode()) for body in bodies],
    )
    return len(bodies)


def _items(
    conn: sqlite3.Connection, kind: str, parent: str, after: int, limit: int
) -> tuple[list[Item], bool]:
    rows = conn.execute(
        "SELECT seq, kind, parent, created_at, body FROM document_items"
        " WHERE kind = ? AND parent = ? AND seq > ? ORDER BY seq LIMIT ?",
        (kind, parent, after, limit + 1),
    ).fetchall()
    items = [Item(row[0], row[1], row[2], row[3], orjson.loads(row[4])) for row in rows[:limit]]
    return items, len(rows) > limit


class DocumentTables(StoreCalls):
    async def put_document(
        self, kind: str, doc_id: str, body: dict[str, Any], *, if_version: int | None = None
    ) -> Document:
        done: Document = await self._write(_in_transaction, _put, kind, doc_id, body, if_version)
        return done

    async def get_document(self, kind: str, doc_id: str) -> Document | None:
        found: Document | None = await self._read(_get, kind, doc_id)
        return found

    async def list_documents(
        self, kind: str, *, after: str | None = None, limit: int = 50
    ) -> tuple[list[Document], bool]:
        found: tuple[list[Document], bool] = await self._read(_list, kind, after, limit)
        return found

    async def delete_document(self, kind: str, doc_id: str) -> bool:
        done: bool = await self._write(_in_transaction, _delete, kind, doc_id)
        return done

    async def documents_changed(self, kind: str) -> tuple[float, int]:
        found: tuple[float, int] = await self._read(_changed, kind)
        return found

    async def add_items(self, kind: str, parent: str, bodies: Sequence[dict[str, Any]]) -> int:
        if not bodies:
            return 0
        added: int = await self._write(_in_transaction, _add_items, kind, parent, bodies)
        return added

    async def list_items(
        self, kind: str, parent: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[Item], bool]:
        found: tuple[list[Item], bool] = await self._read(_items, kind, parent, after, limit)
        return found
