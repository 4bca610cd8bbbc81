"""Reading captures back from Postgres: filters to SQL, pages, chains and stats (private).

The Postgres twin of ``storage._sqlite_read``: the same semantics, ``$n`` parameters. Every
function takes an asyncpg connection; the store calls each inside one read-only
``REPEATABLE READ`` transaction, so a page, its tags and its blobs come from one snapshot.

Pages are ordered by ``seq``; the ``after`` cursor is a capture id and stands for its ``seq``.
Full-text search matches ``captures.search`` (a ``tsvector`` of prompt and answer text) with
``websearch_to_tsquery('simple', …)``, which never raises. So that a query means the same on
both backends, it is first checked with the SQLite store's FTS5 parser (pure, in memory):
what SQLite refuses as a ``QueryError`` is refused here too.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from storage._blobs import decompress, manifest_digests
from storage._rows import CAPTURE_COLUMNS, decode_capture, request_manifest
from storage._sqlite_read import check_fts_query, fts_query
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
SELECT_COLUMNS = ", ".join(f"c.{name}" for name in READ_COLUMNS)
MAX_CHAIN = 10_000


class Params:
    """Collects query parameters and hands out their ``$n`` placeholders."""

    def __init__(self, values: Sequence[Any] = ()) -> None:
        self.values: list[Any] = list(values)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def check_search(where: CaptureFilter) -> None:
    """Raise ``QueryError`` for a search the SQLite backend would refuse."""
    if where.search is not None:
        check_fts_query(fts_query(where.search))


def select_sql(
    where: CaptureFilter,
    *,
    columns: str = SELECT_COLUMNS,
    after: str | None = None,
    order: Order = "desc",
    limit: int | None = None,
    after_seq: int | None = None,
) -> tuple[str, list[Any]]:
    """``SELECT columns`` of captures ``c`` matching ``where``, ordered by ``seq``."""
    p = Params()
    conditions: list[str] = []
    if where.search is not None:
        conditions.append(f"c.search @@ websearch_to_tsquery('simple', {p.add(where.search)})")
    for tag_key, tag_value in where.tags:
        conditions.append(
            "EXISTS (SELECT 1 FROM capture_tags t WHERE t.seq = c.seq"
            f" AND t.key = {p.add(tag_key)} AND t.value = {p.add(tag_value)})"
        )
    for column, value in (
        ("c.model", where.model),
        ("c.endpoint", where.endpoint),
        ("c.outcome", where.outcome),
        ("c.status", where.status),
        ("c.key_fingerprint", where.key_fingerprint),
    ):
        if value is not None:
            conditions.append(f"{column} = {p.add(value)}")
    if where.since is not None:
        conditions.append(f"c.created_at >= {p.add(float(where.since))}")
    if where.until is not None:
        conditions.append(f"c.created_at < {p.add(float(where.until))}")
    if where.has_tool_calls is not None:
        conditions.append(f"c.has_tool_calls = {p.add(bool(where.has_tool_calls))}")
    if where.excluded is not None:
        conditions.append(f"c.excluded = {p.add(bool(where.excluded))}")
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
    cmp = "<" if order == "desc" else ">"
    if after_seq is not None:
        conditions.append(f"c.seq {cmp} {p.add(after_seq)}")
    if after is not None:
        conditions.append(f"c.seq {cmp} (SELECT seq FROM captures WHERE id = {p.add(after)})")
    sql = f"SELECT {columns} FROM captures c"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += f" ORDER BY c.seq {'DESC' if order == 'desc' else 'ASC'}"
    if limit is not None:
        sql += f" LIMIT {p.add(limit)}"
    return sql, p.values


async def decode_rows(conn: Any, rows: Sequence[Any]) -> list[StoredCapture]:
    """Full captures for rows of ``READ_COLUMNS``, with their tags and request blobs."""
    if not rows:
        return []
    values_list = [dict(zip(READ_COLUMNS, row, strict=True)) for row in rows]
    seqs = [values["seq"] for values in values_list]
    tags: dict[int, dict[str, str]] = {seq: {} for seq in seqs}
    for seq, key, value in await conn.fetch(
        "SELECT seq, key, value FROM capture_tags WHERE seq = any($1::bigint[])", seqs
    ):
        tags[seq][key] = value
    digests: set[bytes] = set()
    for values in values_list:
        try:
            digests.update(manifest_digests(request_manifest(values)))
        except (ValueError, zlib.error) as exc:
            raise StoreError(f"capture {values['id']}: bad request manifest: {exc}") from exc
    blobs: dict[bytes, bytes] = {}
    if digests:
        for digest, codec, data in await conn.fetch(
            "SELECT hash, codec, data FROM blobs WHERE hash = any($1::bytea[])", list(digests)
        ):
            blobs[bytes(digest)] = decompress(codec, data)
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


async def list_page(
    conn: Any, where: CaptureFilter, after: str | None, limit: int, order: Order
) -> tuple[list[StoredCapture], bool]:
    if (
        after is not None
        and await conn.fetchval("SELECT 1 FROM captures WHERE id = $1", after) is None
    ):
        raise QueryError(f"after: no capture with id {after!r:.80}", param="after")
    check_search(where)
    sql, params = select_sql(where, after=after, order=order, limit=limit + 1)
    rows = await conn.fetch(sql, *params)
    return await decode_rows(conn, rows[:limit]), len(rows) > limit


async def get_one(
    conn: Any, ref: str, key_fingerprint: str | None, by_response_id: bool
) -> StoredCapture | None:
    column = "response_id" if by_response_id else "id"
    p = Params()
    sql = f"SELECT {SELECT_COLUMNS} FROM captures c WHERE c.{column} = {p.add(ref)}"
    if key_fingerprint is not None:
        sql += f" AND c.key_fingerprint = {p.add(key_fingerprint)}"
    rows = await conn.fetch(sql + " ORDER BY c.id DESC LIMIT 1", *p.values)
    if not rows:
        return None
    return (await decode_rows(conn, rows))[0]


async def chain(conn: Any, capture_id: str) -> tuple[list[StoredCapture], bool, str | None] | None:
    """Follow ``previous_response_id`` back from ``capture_id``; oldest first."""
    row = await conn.fetchrow(
        f"SELECT {SELECT_COLUMNS} FROM captures c WHERE c.id = $1", capture_id
    )
    if row is None:
        return None
    links: list[Any] = []
    seen: set[str] = set()
    missing: str | None = None
    complete = True
    while row is not None:
        links.append(row)
        seen.add(row["id"])
        previous = row["previous_response_id"]
        if previous is None:
            break
        if len(links) >= MAX_CHAIN:
            complete, missing = False, previous
            break
        row = await conn.fetchrow(
            f"SELECT {SELECT_COLUMNS} FROM captures c WHERE c.response_id = $1"
            " AND c.endpoint = 'responses' ORDER BY c.id DESC LIMIT 1",
            previous,
        )
        if row is None or row["id"] in seen:
            complete, missing = False, previous
            break
    links.reverse()
    return await decode_rows(conn, links), complete, missing


async def count_where(conn: Any, where: CaptureFilter) -> int:
    if where.is_empty():
        return int(await conn.fetchval("SELECT count(*) FROM captures"))
    check_search(where)
    sql, params = select_sql(where, columns="c.seq")
    return int(await conn.fetchval(f"SELECT count(*) FROM ({sql}) m", *params))


async def time_quantile(conn: Any, where: CaptureFilter, q: float) -> float | None:
    n = await count_where(conn, where)
    if n == 0:
        return None
    sql, params = select_sql(where, columns="c.created_at AS t")
    offset = min(n - 1, max(0, int(n * q)))
    p = Params(params)
    value = await conn.fetchval(
        f"SELECT t FROM ({sql}) m ORDER BY t LIMIT 1 OFFSET {p.add(offset)}", *p.values
    )
    return float(value)


async def stats_rows(conn: Any, where: CaptureFilter) -> dict[str, Any]:
    """Aggregates over the captures matching ``where``."""
    check_search(where)
    params: list[Any] = []
    source = "captures"
    if not where.is_empty():
        base, params = select_sql(where, columns="c.seq")
        source = f"(SELECT * FROM captures WHERE seq IN ({base}))"
    by: dict[str, dict[str, int]] = {"model": {}, "endpoint": {}, "outcome": {}, "day": {}}
    for model, n in await conn.fetch(f"SELECT model, count(*) FROM {source} s GROUP BY 1", *params):
        by["model"]["" if model is None else str(model)] = n
    for day, n in await conn.fetch(
        f"SELECT floor(created_at / 86400)::bigint, count(*) FROM {source} s GROUP BY 1", *params
    ):
        by["day"][datetime.fromtimestamp(day * 86400, UTC).date().isoformat()] = n
    sums = [0] * 8
    for endpoint, outcome, *numbers in await conn.fetch(
        "SELECT endpoint, outcome, count(*), coalesce(sum(input_tokens), 0),"
        " coalesce(sum(output_tokens), 0), coalesce(sum(total_tokens), 0),"
        " coalesce(sum(cached_tokens), 0), coalesce(sum(reasoning_tokens), 0),"
        f" count(feedback_score), count(*) FILTER (WHERE excluded) FROM {source} s GROUP BY 1, 2",
        *params,
    ):
        by["endpoint"][endpoint] = by["endpoint"].get(endpoint, 0) + numbers[0]
        by["outcome"][outcome] = by["outcome"].get(outcome, 0) + numbers[0]
        for i, value in enumerate(numbers):
            sums[i] += int(value)
    tag_source = (
        "capture_tags"
        if where.is_empty()
        else f"capture_tags WHERE seq IN (SELECT seq FROM {source} s)"
    )
    tag_rows = await conn.fetch(
        f"SELECT key, value, count(*) FROM {tag_source} GROUP BY key, value"
        " ORDER BY count(*) DESC, key, value LIMIT 1000",
        *params,
    )
    return stats_values(by, sums, tag_rows)
