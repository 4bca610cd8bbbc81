"""``PostgresStore``'s documents and items (storage.documents; migration m006; private).

The same behaviour as ``storage._sqlite_documents``. Replicas write side by side, so a write
locks the document's row (``FOR UPDATE``) before comparing versions; a first write that races
another first write loses on the primary key and is reported as a ``VersionConflict``. Items
under one document are inserted under the same lock, so their ``seq`` follows commit order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import orjson

from storage._sqlite_documents import _COLUMNS, document_from_row
from storage.documents import Document, Item, VersionConflict

T = TypeVar("T")
Call = Callable[..., Coroutine[Any, Any, T]]


def _json(value: dict[str, Any]) -> str:
    # Postgres text cannot hold NUL; orjson escapes it inside strings, so JSON text never has one.
    return orjson.dumps(value).decode()


async def _get(conn: Any, kind: str, doc_id: str, *, lock: bool = False) -> Document | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM documents WHERE kind = $1 AND id = $2"
        + (" FOR UPDATE" if lock else ""),
        kind,
        doc_id,
    )
    return document_from_row(row) if row else None


async def _put(
    conn: Any, kind: str, doc_id: str, body: dict[str, Any], if_version: int | None
) -> Document:
    current = await _get(conn, kind, doc_id, lock=True)
    found = current.version if current is not None else 0
    if if_version is not None and if_version != found:
        raise VersionConflict(kind, doc_id, if_version, found)
    now = time.time()
    if current is None:
        inserted = await conn.fetchval(
            f"INSERT INTO documents ({_COLUMNS}) VALUES ($1, $2, 1, $3, $3, $4)"
            " ON CONFLICT (kind, id) DO NOTHING RETURNING 1",
            kind,
            doc_id,
            now,
            _json(body),
        )
        if inserted is None:  # another replica created it between our read and our insert
            raise VersionConflict(kind, doc_id, if_version or 0, 1)
        return Document(kind, doc_id, 1, now, now, body)
    await conn.execute(
        "UPDATE documents SET version = $1, updated_at = $2, body = $3 WHERE kind = $4 AND id = $5",
        found + 1,
        now,
        _json(body),
        kind,
        doc_id,
    )
    return Document(kind, doc_id, found + 1, current.created_at, now, body)


async def _list(conn: Any, kind: str, after: str | None, limit: int) -> tuple[list[Document], bool]:
    params: list[Any] = [kind]
    sql = f"SELECT {_COLUMNS} FROM documents WHERE kind = $1"
    if after is not None:
        params.append(after)
        sql += f" AND id < ${len(params)}"
    params.append(limit + 1)
    rows = await conn.fetch(sql + f" ORDER BY id DESC LIMIT ${len(params)}", *params)
    return [document_from_row(row) for row in rows[:limit]], len(rows) > limit


async def _delete(conn: Any, kind: str, doc_id: str) -> bool:
    await conn.execute("DELETE FROM document_items WHERE kind = $1 AND parent = $2", kind, doc_id)
    deleted = await conn.fetchval(
        "DELETE FROM documents WHERE kind = $1 AND id = $2 RETURNING 1", kind, doc_id
    )
    return deleted is not None


async def _changed(conn: Any, kind: str) -> tuple[float, int]:
    row = await conn.fetchrow(
        "SELECT MAX(updated_at), COUNT(*) FROM documents WHERE kind = $1", kind
    )
    return (float(row[0] or 0.0), int(row[1]))


async def _add_items(conn: Any, kind: str, parent: str, bodies: Sequence[dict[str, Any]]) -> int:
    await conn.execute(
        "SELECT 1 FROM documents WHERE kind = $1 AND id = $2 FOR UPDATE", kind, parent
    )
    now = time.time()
    await conn.executemany(
        "INSERT INTO document_items (kind, parent, created_at, body) VALUES ($1, $2, $3, $4)",
        [(kind, parent, now, _json(body)) for body in bodies],
    )
    return len(bodies)


async def _items(
    conn: Any, kind: str, parent: str, after: int, limit: int
) -> tuple[list[Item], bool]:
    rows = await conn.fetch(
        "SELECT seq, kind, parent, created_at, body FROM document_items"
        " WHERE kind = $1 AND parent = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        kind,
        parent,
        after,
        limit + 1,
    )
    items = [
        Item(int(row[0]), row[1], row[2], row[3], orjson.loads(row[4])) for row in rows[:limit]
    ]
    return items, len(rows) > limit


class PgDocumentTables:
    """Mixin: needs ``_read(fn, *args)`` and ``_write(fn, *args)`` from the store."""

    async def _read(self, fn: Call[T], *args: Any) -> T:
        raise NotImplementedError

    async def _write(self, fn: Call[T], *args: Any) -> T:
        raise NotImplementedError

    async def put_document(
        self, kind: str, doc_id: str, body: dict[str, Any], *, if_version: int | None = None
    ) -> Document:
        return await self._write(_put, kind, doc_id, body, if_version)

    async def get_document(self, kind: str, doc_id: str) -> Document | None:
        return await self._read(_get, kind, doc_id)

    async def list_documents(
        self, kind: str, *, after: str | None = None, limit: int = 50
    ) -> tuple[list[Document], bool]:
        return await self._read(_list, kind, after, limit)

    async def delete_document(self, kind: str, doc_id: str) -> bool:
        return await self._write(_delete, kind, doc_id)

    async def documents_changed(self, kind: str) -> tuple[float, int]:
        return await self._read(_changed, kind)

    async def add_items(self, kind: str, parent: str, bodies: Sequence[dict[str, Any]]) -> int:
        if not bodies:
            return 0
        return await self._write(_add_items, kind, parent, bodies)

    async def list_items(
        self, kind: str, parent: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[Item], bool]:
        return await self._read(_items, kind, parent, after, limit)
