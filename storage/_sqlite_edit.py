"""Curation edits and hard deletes in SQLite (private; run on the writer connection's thread).

A delete removes the capture row, its tags (cascade), its entries in the full-text index, and
the request segments no other capture uses. The writer connection runs with
``secure_delete = ON``, so freed space is zeroed; the store then rewrites the touched full-text
index partitions without the deleted rows (``optimize_partition``) and checkpoints the WAL with
TRUNCATE (``checkpoint_truncate``), after which the deleted text is in neither file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import orjson

from storage import _sqlite_search
from storage._blobs import manifest_digests
from storage._rows import request_manifest
from storage._sqlite_read import (
    MAX_PARAMS,
    READ_COLUMNS,
    check_fts_query,
    decode_rows,
    fts_query,
    get_one,
    run_query,
    select_sql,
)
from storage.query import UNSET, CaptureFilter, CapturePatch, StoredCapture

T = TypeVar("T")
DELETE_CHUNK = 500  # captures per delete transaction (purges of many rows stay responsive)
_CHECKPOINT_TRIES = 50


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def matching_ids(conn: sqlite3.Connection, where: CaptureFilter) -> list[str]:
    if where.search is not None:
        check_fts_query(fts_query(where.search))
    sql, params = select_sql(where, columns="c.id", search_parts=_sqlite_search.partitions(conn))
    return [row[0] for row in run_query(conn, sql, params)]


def _seqs(conn: sqlite3.Connection, ids: Sequence[str]) -> list[int]:
    found: list[int] = []
    for chunk in _chunks(ids):
        rows = conn.execute(f"SELECT seq FROM captures WHERE id IN ({_marks(chunk)})", chunk)
        found += [row[0] for row in rows]
    return found


def _chunks(values: Sequence[T], size: int = MAX_PARAMS) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


# -- edits --------------------------------------------------------------------------------------


def _apply_patch(conn: sqlite3.Connection, ids: Sequence[str], patch: CapturePatch) -> int:
    seqs = _seqs(conn, ids)
    sets: list[str] = ["curated_at = ?"]
    values: list[Any] = [time.time()]
    for column, value in (
        ("feedback_score", patch.feedback_score),
        ("feedback_note", patch.feedback_note),
    ):
        if value is not UNSET:
            sets.append(f"{column} = ?")
            values.append(value)
    if patch.excluded is not UNSET:
        sets.append("excluded = ?")
        values.append(int(patch.excluded))
    if patch.corrected_response is not UNSET:
        sets.append("corrected_response = ?")
        corrected = patch.corrected_response
        values.append(orjson.dumps(corrected) if corrected is not None else None)
    changed = 0
    for chunk in _chunks(seqs):
        marks = _marks(chunk)
        cursor = conn.execute(
            f"UPDATE captures SET {', '.join(sets)} WHERE seq IN ({marks})", [*values, *chunk]
        )
        changed += cursor.rowcount
        if patch.remove_tags:
            conn.execute(
                f"DELETE FROM capture_tags WHERE seq IN ({marks})"
                f" AND key IN ({_marks(patch.remove_tags)})",
                [*chunk, *patch.remove_tags],
            )
        if patch.add_tags:
            conn.executemany(
                "INSERT INTO capture_tags (seq, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (seq, key) DO UPDATE SET value = excluded.value",
                [(seq, key, value) for seq in chunk for key, value in patch.add_tags.items()],
            )
    return changed


def update_one(
    conn: sqlite3.Connection, capture_id: str, patch: CapturePatch
) -> StoredCapture | None:
    with _transaction(conn):
        if not _apply_patch(conn, [capture_id], patch):
            return None
        return get_one(conn, capture_id, None, False)


def update_where(conn: sqlite3.Connection, where: CaptureFilter, patch: CapturePatch) -> int:
    with _transaction(conn):
        return _apply_patch(conn, matching_ids(conn, where), patch)


# -- deletes ------------------------------------------------------------------------------------


def _delete_chunk(conn: sqlite3.Connection, ids: Sequence[str]) -> tuple[int, set[int]]:
    columns = ", ".join(f"c.{name}" for name in READ_COLUMNS)
    rows = conn.execute(
        f"SELECT {columns} FROM captures c WHERE c.id IN ({_marks(ids)})", list(ids)
    ).fetchall()
    if not rows:
        return 0, set()
    stored = decode_rows(conn, rows)
    refs: Counter[bytes] = Counter()
    touched: set[int] = set()
    for row, capture in zip(rows, stored, strict=True):
        values = dict(zip(READ_COLUMNS, row, strict=True))
        part = _sqlite_search.forget(conn, values["seq"], capture.record)
        if part is not None:
            touched.add(part)
        refs.update(manifest_digests(request_manifest(values)))
    if refs:
        conn.executemany(
            "UPDATE blobs SET refs = refs - ? WHERE hash = ?", [(n, h) for h, n in refs.items()]
        )
        digests = list(refs)
        for chunk in _chunks(digests):
            conn.execute(f"DELETE FROM blobs WHERE refs <= 0 AND hash IN ({_marks(chunk)})", chunk)
    found = [row[0] for row in rows]  # seq
    conn.execute(f"DELETE FROM capture_tags WHERE seq IN ({_marks(found)})", found)
    conn.execute(f"DELETE FROM captures WHERE seq IN ({_marks(found)})", found)
    return len(found), touched


def delete_chunk(conn: sqlite3.Connection, ids: Sequence[str]) -> tuple[int, set[int]]:
    """Hard delete up to ``DELETE_CHUNK`` captures in one transaction.

    Returns the number deleted and the index partitions to optimize.
    """
    with _transaction(conn):
        return _delete_chunk(conn, ids)


def optimize_partition(conn: sqlite3.Connection, part: int) -> None:
    """Rewrite one index partition without its deleted rows (after ``delete_chunk``)."""
    with _transaction(conn):
        _sqlite_search.optimize(conn, [part])


def checkpoint_truncate(conn: sqlite3.Connection) -> bool:
    """``wal_checkpoint(TRUNCATE)``, retried while readers hold old snapshots."""
    for _ in range(_CHECKPOINT_TRIES):
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return True
        time.sleep(0.02)
    return False
