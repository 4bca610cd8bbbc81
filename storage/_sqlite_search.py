"""The full-text index: contentless FTS5 tables, one per 65,536 captures (private).

Each capture's prompt and answer text (``storage.text.search_text``) is indexed in
``captures_fts_<part>`` with rowid = ``captures.seq`` and ``part = seq >> PARTITION_BITS``;
``search_partitions`` lists the parts that exist. Why partitions: FTS5 in SQLite 3.40 forgets a
deleted row's terms only when ``optimize`` rewrites the whole index, which takes seconds for a
million captures; rewriting one partition takes a fraction of a second. Search pages walk the
partitions newest first and stop when a page is full, so they cost no more than one index.

Pages are ordered by rowid, never ranked, so no per-row sizes are kept (``columnsize = 0``:
about a tenth less work per insert). Contentless means the index holds tokens, not text, and
forgets a row only when given the row's text again: deletes recompute it with ``search_text``
from the stored record. After a hard delete ``optimize`` rewrites the touched partitions
without the deleted rows, so with ``secure_delete`` their terms leave the file too.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from storage.models import CaptureRecord
from storage.text import search_text

PARTITION_BITS = 16
_MAX_PARAMS = 500
_INDEX_ALL_CHUNK = 500


def partition_of(seq: int) -> int:
    return seq >> PARTITION_BITS


def table(part: int) -> str:
    return f"captures_fts_{int(part)}"


def partitions(conn: sqlite3.Connection) -> list[int]:
    """The partitions that exist, oldest first."""
    return [row[0] for row in conn.execute("SELECT part FROM search_partitions ORDER BY part")]


def _ensure(conn: sqlite3.Connection, parts: Iterable[int]) -> None:
    for part in parts:
        if conn.execute(
            "INSERT OR IGNORE INTO search_partitions (part) VALUES (?)", (part,)
        ).rowcount:
            conn.execute(
                f"CREATE VIRTUAL TABLE {table(part)} USING fts5 (prompt, answer, content = '',"
                " columnsize = 0, tokenize = 'unicode61 remove_diacritics 2')"
            )


def texts(record: CaptureRecord) -> tuple[str, str]:
    return search_text(record.endpoint, record.request_body, record.response)


def index_records(
    conn: sqlite3.Connection,
    records: Sequence[CaptureRecord],
    seqs: Mapping[str, int] | None = None,
) -> None:
    """Index captures just inserted, in the caller's transaction (unknown ids are skipped).

    ``seqs`` (capture id -> seq), when the caller has them already, saves looking them up.
    """
    wanted: dict[str, tuple[str, str]] = {}
    for record in records:
        prompt, answer = texts(record)
        if prompt or answer:
            wanted[record.id] = (prompt, answer)
    if not wanted:
        return
    by_part: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    if seqs is None:
        ids = list(wanted)
        found: list[tuple[str, int]] = []
        for start in range(0, len(ids), _MAX_PARAMS):
            chunk = ids[start : start + _MAX_PARAMS]
            marks = ", ".join("?" for _ in chunk)
            found += conn.execute(f"SELECT id, seq FROM captures WHERE id IN ({marks})", chunk)
    else:
        found = [(capture_id, seqs[capture_id]) for capture_id in wanted if capture_id in seqs]
    for capture_id, seq in found:
        by_part[partition_of(seq)].append((seq, *wanted[capture_id]))
    _ensure(conn, sorted(by_part))
    for part, rows in by_part.items():
        conn.executemany(
            f"INSERT INTO {table(part)} (rowid, prompt, answer) VALUES (?, ?, ?)", rows
        )


def forget(conn: sqlite3.Connection, seq: int, record: CaptureRecord) -> int | None:
    """Remove a capture from its partition; the partition touched (None if it had no text)."""
    prompt, answer = texts(record)
    if not (prompt or answer):
        return None
    part = partition_of(seq)
    name = table(part)
    conn.execute(
        f"INSERT INTO {name} ({name}, rowid, prompt, answer) VALUES ('delete', ?, ?, ?)",
        (seq, prompt, answer),
    )
    return part


def optimize(conn: sqlite3.Connection, parts: Iterable[int]) -> None:
    """Rewrite each partition's index without its deleted rows."""
    existing = set(partitions(conn))
    for part in sorted(set(parts) & existing):
        name = table(part)
        conn.execute(f"INSERT INTO {name} ({name}) VALUES ('optimize')")


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
