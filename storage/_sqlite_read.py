"""Reading captures back from SQLite: filters to SQL, pages, chains and stats (private).

Every function here is synchronous and takes a ``sqlite3.Connection``: the store runs each one
as a single call on its connection's thread, inside one read transaction, so a page, its tags
and its blobs come from one snapshot and cost one thread hand-off.

Plans (checked with EXPLAIN QUERY PLAN on a million captures, bench/query_latency.py):

Pages are ordered by ``seq``, the order captures were stored in (the id's time order, give or
take a request that took long), so the indexes hand out rows already sorted:

* a tag filter drives from ``capture_tags_key_value`` (key, value, seq): the page is the next
  ``limit`` entries of that index, without touching other captures;
* a full-text search drives from the index partitions (``storage._sqlite_search``) newest
  first, each in rowid (= seq) order, stopping when a page is full;
* a model filter walks ``captures_model`` (model, seq); anything else walks captures by seq,
  newest first, testing each row.

The ``after`` cursor is a capture id; it stands for that capture's ``seq``.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from storage import _sqlite_search
from storage._blobs import decompress, manifest_digests
from storage._rows import CAPTURE_COLUMNS, decode_capture, request_manifest
from storage._store_reads import stats_values
from storage.errors import StoreError
from storage.query import CaptureFilter, Curation, Order, QueryError, StoredCapture

CURATION_COLUMNS: tuple[str, ...] = (
    "feedback_score",
    "feedback_note",
    "excluded",
    "corrected_response",
    "curated_at",
)
READ_COLUMNS = ("seq", *CAPTURE_COLUMNS, *CURATION_COLUMNS)
_SELECT_COLUMNS = ", ".join(f"c.{name}" for name in READ_COLUMNS)
MAX_PARAMS = 500
MAX_CHAIN = 10_000  # previous_response_id links followed before a chain is called incomplete

_FTS_SYNTAX = ('"', "*", "(", ")", ":", "^", "+", "{", "}")
_FTS_WORDS = {"AND", "OR", "NOT", "NEAR"}


def fts_query(text: str) -> str:
    """Plain words become quoted phrases, all required; FTS5 syntax is passed through as is.

    ``gpt-4o refund`` → ``"gpt-4o" "refund"`` (a bare ``gpt-4o`` is an FTS5 syntax error).
    """
    words = text.split()
    if any(ch in text for ch in _FTS_SYNTAX) or any(w in _FTS_WORDS for w in words):
        return text
    return " ".join(f'"{word}"' for word in words)


def select_sql(
    where: CaptureFilter,
    *,
    columns: str = _SELECT_COLUMNS,
    after: str | None = None,
    order: Order = "desc",
    limit: int | None = None,
    search_part: int | None = None,
    search_parts: Sequence[int] = (),
    after_seq: int | None = None,
) -> tuple[str, list[Any]]:
    """``SELECT columns`` of captures ``c`` matching ``where``, ordered by ``seq``.

    A search drives from the partition ``search_part`` when given (a page); otherwise it is a
    condition over every partition in ``search_parts`` (bulk edits, stats).
    """
    conditions: list[str] = []
    params: list[Any] = []
    tags = where.tags
    if where.search is not None and search_part is not None:
        fts = _sqlite_search.table(search_part)
        source = f"{fts} CROSS JOIN captures c ON c.seq = {fts}.rowid"
        conditions.append(f"{fts} MATCH ?")
        params.append(fts_query(where.search))
        key = f"{fts}.rowid"
    elif tags:
        source = "capture_tags t0 CROSS JOIN captures c ON c.seq = t0.seq"
        conditions += ["t0.key = ?", "t0.value = ?"]
        params += list(tags[0])
        key, tags = "t0.seq", tags[1:]
    else:
        source, key = "captures c", "c.seq"
    if where.search is not None and search_part is None:
        matches = [
            f"SELECT rowid FROM {_sqlite_search.table(part)} WHERE {_sqlite_search.table(part)}"
            " MATCH ?"
            for part in search_parts
        ]
        conditions.append(f"c.seq IN ({' UNION ALL '.join(matches)})" if matches else "0")
        params += [fts_query(where.search)] * len(matches)
    for tag_key, tag_value in tags:
        conditions.append(
            "EXISTS (SELECT 1 FROM capture_tags t WHERE t.seq = c.seq"
            " AND t.key = ? AND t.value = ?)"
        )
        params += [tag_key, tag_value]
    for column, value in (
        ("c.model", where.model),
        ("c.endpoint", where.endpoint),
        ("c.outcome", where.outcome),
        ("c.status", where.status),
        ("c.key_fingerprint", where.key_fingerprint),
    ):
        if value is not None:
            conditions.append(f"{column} = ?")
            params.append(value)
    if where.since is not None:
        conditions.append("c.created_at >= ?")
        params.append(where.since)
    if where.until is not None:
        conditions.append("c.created_at < ?")
        params.append(where.until)
    if where.has_tool_calls is not None:
        conditions.append("c.has_tool_calls = ?")
        params.append(int(where.has_tool_calls))
    if where.excluded is not None:
        conditions.append("c.excluded = ?")
        params.append(int(where.excluded))
    if where.feedback is not None:
        conditions.append(
            {
                "positive": "c.feedback_score > 0",
                "negative": "c.feedback_score < 0",
                "neutral": "c.feedback_score = 0",
                "any": "c.feedback_score IS NOT NULL",
                "none": "c.feedback_score IS NULL",
            }[where.feedback]
        )
    if where.stored_completions:
        conditions.append(
            "c.endpoint = 'chat/completions' AND c.outcome = 'completed'"
            " AND c.response_id IS NOT NULL AND c.response_json_codec IS NOT NULL"
        )
    if after_seq is not None:
        conditions.append(f"{key} {'<' if order == 'desc' else '>'} ?")
        params.append(after_seq)
    if after is not None:
        conditions.append(
            f"{key} {'<' if order == 'desc' else '>'} (SELECT seq FROM captures WHERE id = ?)"
        )
        params.append(after)
    sql = f"SELECT {columns} FROM {source}"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += f" ORDER BY {key} {'DESC' if order == 'desc' else 'ASC'}"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


# What SQLite's errors say when FTS5 cannot parse a MATCH query (``*x`` asks for an FTS5
# "special query", e.g. ``*reads``, and fails as "unknown special query").
_FTS_QUERY_ERRORS = ("fts5", "no such column", "unterminated", "unknown special query")


def run_query(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """Execute a filter query; an FTS5 query it cannot parse is the caller's error."""
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if any(sign in text for sign in _FTS_QUERY_ERRORS):
            raise QueryError(
                f"search is not a valid full-text query: {text}", param="search"
            ) from None
        raise


def _in_chunks(values: Sequence[Any]) -> Iterable[tuple[Sequence[Any], str]]:
    for start in range(0, len(values), MAX_PARAMS):
        chunk = values[start : start + MAX_PARAMS]
        yield chunk, ", ".join("?" for _ in chunk)


def decode_rows(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[StoredCapture]:
    """Full captures for rows of ``READ_COLUMNS``, with their tags and request blobs."""
    values_list = [dict(zip(READ_COLUMNS, row, strict=True)) for row in rows]
    seqs = [values["seq"] for values in values_list]
    tags: dict[int, dict[str, str]] = {seq: {} for seq in seqs}
    for chunk, marks in _in_chunks(seqs):
        for seq, key, value in conn.execute(
            f"SELECT seq, key, value FROM capture_tags WHERE seq IN ({marks})", chunk
        ):
            tags[seq][key] = value
    digests: set[bytes] = set()
    for values in values_list:
        try:
            digests.update(manifest_digests(request_manifest(values)))
        except (ValueError, zlib.error) as exc:
            raise StoreError(f"capture {values['id']}: bad request manifest: {exc}") from exc
    blobs: dict[bytes, bytes] = {}
    wanted = list(digests)
    for chunk, marks in _in_chunks(wanted):
        for digest, codec, data in conn.execute(
            f"SELECT hash, codec, data FROM blobs WHERE hash IN ({marks})", chunk
        ):
            blobs[digest] = decompress(codec, data)
    out: list[StoredCapture] = []
    for values in values_list:
        try:
            record = decode_capture(values, tags[values["seq"]], blobs)
            curation = _curation(values)
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            raise StoreError(f"capture {values['id']} cannot be decoded: {exc!r}") from exc
        out.append(StoredCapture(record, curation))
    return out


def _curation(values: dict[str, Any]) -> Curation:
    corrected = values["corrected_response"]
    return Curation(
        feedback_score=values["feedback_score"],
        feedback_note=values["feedback_note"],
        excluded=bool(values["excluded"]),
        corrected_response=orjson.loads(corrected) if corrected is not None else None,
        updated_at=values["curated_at"],
    )


def read_snapshot(conn: sqlite3.Connection, fn: Any, *args: Any) -> Any:
    """Run ``fn(conn, *args)`` inside one read transaction."""
    conn.execute("BEGIN")
    try:
        return fn(conn, *args)
    finally:
        conn.execute("ROLLBACK")


def list_page(
    conn: sqlite3.Connection, where: CaptureFilter, after: str | None, limit: int, order: Order
) -> tuple[list[StoredCapture], bool]:
    if (
        after is not None
        and conn.execute("SELECT 1 FROM captures WHERE id = ?", (after,)).fetchone() is None
    ):
        raise QueryError(f"after: no capture with id {after!r:.80}", param="after")
    if where.search is None:
        sql, params = select_sql(where, after=after, order=order, limit=limit + 1)
        rows = run_query(conn, sql, params)
    else:
        rows = _search_page(conn, where, after, limit + 1, order)
    return decode_rows(conn, rows[:limit]), len(rows) > limit


_syntax_check: sqlite3.Connection | None = None
_syntax_lock = threading.Lock()


def check_fts_query(query: str) -> None:
    """Raise ``QueryError`` if FTS5 cannot parse ``query`` (even when no partition exists)."""
    global _syntax_check
    with _syntax_lock:
        if _syntax_check is None:
            _syntax_check = sqlite3.connect(":memory:", check_same_thread=False)
            _syntax_check.execute("CREATE VIRTUAL TABLE t USING fts5 (prompt, answer)")
        run_query(_syntax_check, "SELECT rowid FROM t WHERE t MATCH ?", [query])


def _search_page(
    conn: sqlite3.Connection, where: CaptureFilter, after: str | None, wanted: int, order: Order
) -> list[Any]:
    """Up to ``wanted`` rows, partition by partition in page order."""
    check_fts_query(fts_query(where.search or ""))
    parts = _sqlite_search.partitions(conn)
    if order == "desc":
        parts.reverse()
    if after is not None:
        row = conn.execute("SELECT seq FROM captures WHERE id = ?", (after,)).fetchone()
        edge = _sqlite_search.partition_of(row[0])
        parts = [p for p in parts if (p <= edge if order == "desc" else p >= edge)]
    rows: list[Any] = []
    for part in parts:
        sql, params = select_sql(
            where, after=after, order=order, limit=wanted - len(rows), search_part=part
        )
        rows += run_query(conn, sql, params)
        if len(rows) >= wanted:
            break
    return rows


def get_one(
    conn: sqlite3.Connection, ref: str, key_fingerprint: str | None, by_response_id: bool
) -> StoredCapture | None:
    column = "response_id" if by_response_id else "id"
    sql = f"SELECT {_SELECT_COLUMNS} FROM captures c WHERE c.{column} = ?"
    params: list[Any] = [ref]
    if key_fingerprint is not None:
        sql += " AND c.key_fingerprint = ?"
        params.append(key_fingerprint)
    rows = conn.execute(sql + " ORDER BY c.id DESC LIMIT 1", params).fetchall()
    if not rows:
        return None
    return decode_rows(conn, rows)[0]


def chain(
    conn: sqlite3.Connection, capture_id: str
) -> tuple[list[StoredCapture], bool, str | None] | None:
    """Follow ``previous_response_id`` back from ``capture_id``; oldest first."""
    links: list[Any] = []
    rows = conn.execute(f"SELECT {_SELECT_COLUMNS} FROM captures c WHERE c.id = ?", (capture_id,))
    row = rows.fetchone()
    if row is None:
        return None
    seen: set[str] = set()
    missing: str | None = None
    complete = True
    while row is not None:
        links.append(row)
        seen.add(row[1])
        previous = row[READ_COLUMNS.index("previous_response_id")]
        if previous is None:
            break
        if len(links) >= MAX_CHAIN:
            complete, missing = False, previous
            break
        row = conn.execute(
            f"SELECT {_SELECT_COLUMNS} FROM captures c WHERE c.response_id = ?"
            " AND c.endpoint = 'responses' ORDER BY c.id DESC LIMIT 1",
            (previous,),
        ).fetchone()
        if row is None or row[1] in seen:
            complete, missing = False, previous
            break
    links.reverse()
    return decode_rows(conn, links), complete, missing


def count_where(conn: sqlite3.Connection, where: CaptureFilter) -> int:
    if where.is_empty():
        return int(conn.execute("SELECT count(*) FROM captures").fetchone()[0])
    if where.search is not None:
        check_fts_query(fts_query(where.search))
    sql, params = select_sql(where, columns="c.seq", search_parts=_sqlite_search.partitions(conn))
    return int(run_query(conn, f"SELECT count(*) FROM ({sql})", params)[0][0])


def time_quantile(conn: sqlite3.Connection, where: CaptureFilter, q: float) -> float | None:
    n = count_where(conn, where)
    if n == 0:
        return None
    sql, params = select_sql(
        where, columns="c.created_at AS t", search_parts=_sqlite_search.partitions(conn)
    )
    offset = min(n - 1, max(0, int(n * q)))
    rows = run_query(conn, f"SELECT t FROM ({sql}) ORDER BY t LIMIT 1 OFFSET ?", [*params, offset])
    return float(rows[0][0])


def stats_rows(conn: sqlite3.Connection, where: CaptureFilter) -> dict[str, Any]:
    """Aggregates over the captures matching ``where``."""
    base, params = select_sql(where, columns="c.seq", search_parts=_sqlite_search.partitions(conn))
    matched = f"SELECT * FROM captures WHERE seq IN ({base})" if not where.is_empty() else None
    source = f"({matched})" if matched else "captures"
    p = params if matched else []

    # Model and day come from their indexes; the rest is one pass grouped by two small keys.
    by: dict[str, dict[str, int]] = {"model": {}, "endpoint": {}, "outcome": {}, "day": {}}
    for model, n in run_query(conn, f"SELECT model, count(*) FROM {source} GROUP BY 1", p):
        by["model"]["" if model is None else str(model)] = n
    for day, n in run_query(
        conn,
        f"SELECT CAST(created_at / 86400 AS INTEGER), count(*) FROM {source} GROUP BY 1",
        p,
    ):
        by["day"][datetime.fromtimestamp(day * 86400, UTC).date().isoformat()] = n
    sums = [0] * 8
    for endpoint, outcome, *numbers in run_query(
        conn,
        "SELECT endpoint, outcome, count(*), total(input_tokens), total(output_tokens),"
        " total(total_tokens), total(cached_tokens), total(reasoning_tokens),"
        f" count(feedback_score), total(excluded) FROM {source} GROUP BY 1, 2",
        p,
    ):
        by["endpoint"][endpoint] = by["endpoint"].get(endpoint, 0) + numbers[0]
        by["outcome"][outcome] = by["outcome"].get(outcome, 0) + numbers[0]
        for i, value in enumerate(numbers):
            sums[i] += int(value)
    tag_source = (
        f"capture_tags WHERE seq IN (SELECT seq FROM {source})" if matched else "capture_tags"
    )
    tag_rows = run_query(
        conn,
        f"SELECT key, value, count(*) FROM {tag_source} GROUP BY key, value"
        " ORDER BY count(*) DESC, key, value LIMIT 1000",
        p,
    )
    return stats_values(by, sums, tag_rows)
