"""Keeping ``captures_fts`` (contentless FTS5, rowid = ``captures.seq``) in step (private).

Contentless means the index holds tokens, not text, and forgets a row only when given the row's
text again: deletes recompute it with ``search_text`` from the stored record. After a hard
delete, ``optimize`` rewrites the index into one segment without the deleted rows, so with
``secure_delete`` their terms leave the file too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from storage._search import search_text
from storage.models import CaptureRecord

_INDEX = (
    "INSERT INTO captures_fts (rowid, prompt, answer) SELECT seq, ?, ? FROM captures WHERE id = ?"
)
_FORGET = (
    "INSERT INTO captures_fts (captures_fts, rowid, prompt, answer) VALUES ('delete', ?, ?, ?)"
)
_INDEX_ALL_CHUNK = 500


def texts(record: CaptureRecord) -> tuple[str, str]:
    return search_text(record.endpoint, record.request_body, record.response)


def index_records(conn: sqlite3.Connection, records: Sequence[CaptureRecord]) -> None:
    """Index captures just inserted (by id; ids not in ``captures`` are skipped)."""
    rows = []
    for record in records:
        prompt, answer = texts(record)
        if prompt or answer:
            rows.append((prompt, answer, record.id))
    if rows:
        conn.executemany(_INDEX, rows)


def forget(conn: sqlite3.Connection, seq: int, record: CaptureRecord) -> None:
    prompt, answer = texts(record)
    if prompt or answer:
        conn.execute(_FORGET, (seq, prompt, answer))


def optimize(conn: sqlite3.Connection) -> None:
    """Merge the index into one segment, dropping deleted rows' entries for good."""
    conn.execute("INSERT INTO captures_fts (captures_fts) VALUES ('optimize')")


def index_all(conn: sqlite3.Connection) -> None:
    """Index every capture (the migration that creates the index)."""
    from storage._sqlite_read import READ_COLUMNS, decode_rows

    columns = ", ".join(f"c.{name}" for name in READ_COLUMNS)
    last = -1
    while True:
        rows = conn.execute(
            f"SELECT {columns} FROM captures c WHERE c.seq > ? ORDER BY c.seq LIMIT ?",
            (last, _INDEX_ALL_CHUNK),
        ).fetchall()
        if not rows:
            return
        captures = decode_rows(conn, rows)
        index_records(conn, [stored.record for stored in captures])
        last = rows[-1][0]
