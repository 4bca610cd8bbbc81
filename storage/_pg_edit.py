"""Writes, curation edits and hard deletes in Postgres (private; each call is one transaction).

Writes: one ``INSERT … SELECT FROM unnest(…) ON CONFLICT (id) DO NOTHING RETURNING id, seq``
per batch, so a retried batch is idempotent and blob reference counts and tags are added only
for the captures that batch really inserted. Blob upserts are sorted by hash, so concurrent
batches from several replicas lock shared blob rows in one order (no deadlocks).

A delete removes the capture row (its ``search`` vector with it), its tags (cascade), and the
request segments no other capture uses. Postgres has no ``secure_delete``: the deleted tuples
stay in the table files until VACUUM reclaims the space and new rows overwrite it (and in WAL
segments and base backups until those are recycled). The store does not VACUUM after each
delete — a plain VACUUM scans every index of the table, too costly per deleted capture, and it
still would not zero the bytes; autovacuum reclaims the space. Where erasure must reach the
disk, run ``VACUUM FULL captures, blobs, capture_tags`` (rewrites the tables) after the delete.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from storage._blobs import manifest_digests
from storage._pg_read import check_search, get_one, select_sql
from storage._rows import CAPTURE_COLUMNS, EncodedBatch, request_manifest
from storage.query import UNSET, CaptureFilter, CapturePatch, StoredCapture

DELETE_CHUNK = 500

_PG_TYPES: dict[str, str] = {
    "id": "text",
    "created_at": "float8",
    "stream": "bool",
    "status": "int4",
    "latency_ms": "float8",
    "ttft_ms": "float8",
    "input_tokens": "int8",
    "output_tokens": "int8",
    "total_tokens": "int8",
    "cached_tokens": "int8",
    "reasoning_tokens": "int8",
    "has_tool_calls": "bool",
    "retry_count": "int4",
    "request_size": "int8",
    "request_codec": "int2",
    "request_manifest": "bytea",
    "response_size": "int8",
    "response_truncated": "bool",
    "response_codec": "int2",
    "response_body": "bytea",
    "response_json_codec": "int2",
    "response_json": "bytea",
}
_TYPES = [_PG_TYPES.get(name, "text") for name in CAPTURE_COLUMNS]
_BOOLS = {i for i, kind in enumerate(_TYPES) if kind == "bool"}
_N = len(CAPTURE_COLUMNS)
INSERT_CAPTURES = (
    f"INSERT INTO captures ({', '.join(CAPTURE_COLUMNS)}, search)"
    f" SELECT {', '.join(f'u.{name}' for name in CAPTURE_COLUMNS)},"
    " to_tsvector('simple', u.search_text)"
    f" FROM unnest({', '.join(f'${i + 1}::{kind}[]' for i, kind in enumerate(_TYPES))},"
    f" ${_N + 1}::text[]) AS u ({', '.join(CAPTURE_COLUMNS)}, search_text)"
    " ON CONFLICT (id) DO NOTHING RETURNING id, seq"
)
_UPSERT_BLOBS = (
    "INSERT INTO blobs (hash, refs, codec, size, data)"
    " SELECT * FROM unnest($1::bytea[], $2::int8[], $3::int2[], $4::int8[], $5::bytea[])"
    " ON CONFLICT (hash) DO UPDATE SET refs = blobs.refs + excluded.refs"
)
_INSERT_TAGS = (
    "INSERT INTO capture_tags (seq, key, value)"
    " SELECT * FROM unnest($1::int8[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING"
)


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(_N)]
    for row in rows:
        for i, value in enumerate(row):
            columns[i].append(bool(value) if i in _BOOLS else value)
    return columns


async def write_batches(conn: Any, batches: list[EncodedBatch], texts: dict[str, str]) -> int:
    """Insert every capture not stored yet, in the caller's transaction; the number inserted."""
    inserted = 0
    for batch in batches:
        if not batch.captures:
            continue
        rows = [c.row for c in batch.captures]
        search = [texts.get(c.id, "") for c in batch.captures]
        stored = await conn.fetch(INSERT_CAPTURES, *_columns(rows), search)
        if not stored:
            continue
        inserted += len(stored)
        seq_of = {row["id"]: row["seq"] for row in stored}
        new = [c for c in batch.captures if c.id in seq_of]
        refs = Counter(digest for capture in new for digest in capture.digests)
        if refs:
            hashes = sorted(refs)
            blob = [batch.blobs[h] for h in hashes]
            await conn.execute(
                _UPSERT_BLOBS,
                hashes,
                [refs[h] for h in hashes],
                [b[0] for b in blob],
                [b[1] for b in blob],
                [b[2] for b in blob],
            )
        tags = [(seq_of[cid], k, v) for c in new for cid, k, v in c.tags]
        if tags:
            await conn.execute(
                _INSERT_TAGS, [t[0] for t in tags], [t[1] for t in tags], [t[2] for t in tags]
            )
    return inserted


# -- edits --------------------------------------------------------------------------------------


async def matching_ids(conn: Any, where: CaptureFilter) -> list[str]:
    check_search(where)
    sql, params = select_sql(where, columns="c.id")
    return [row[0] for row in await conn.fetch(sql, *params)]


async def _apply_patch(conn: Any, ids: Sequence[str], patch: CapturePatch) -> int:
    sets = ["curated_at = $2"]
    values: list[Any] = [list(ids), time.time()]

    def add(column: str, value: Any) -> None:
        values.append(value)
        sets.append(f"{column} = ${len(values)}")

    if patch.feedback_score is not UNSET:
        add("feedback_score", patch.feedback_score)
    if patch.feedback_note is not UNSET:
        add("feedback_note", patch.feedback_note)
    if patch.excluded is not UNSET:
        add("excluded", bool(patch.excluded))
    if patch.corrected_response is not UNSET:
        corrected = patch.corrected_response
        add("corrected_response", orjson.dumps(corrected) if corrected is not None else None)
    rows = await conn.fetch(
        f"UPDATE captures SET {', '.join(sets)} WHERE id = any($1::text[]) RETURNING seq", *values
    )
    seqs = [row[0] for row in rows]
    if seqs and patch.remove_tags:
        await conn.execute(
            "DELETE FROM capture_tags WHERE seq = any($1::int8[]) AND key = any($2::text[])",
            seqs,
            list(patch.remove_tags),
        )
    if seqs and patch.add_tags:
        pairs = [(seq, k, v) for seq in seqs for k, v in patch.add_tags.items()]
        await conn.execute(
            "INSERT INTO capture_tags (seq, key, value)"
            " SELECT * FROM unnest($1::int8[], $2::text[], $3::text[])"
            " ON CONFLICT (seq, key) DO UPDATE SET value = excluded.value",
            [p[0] for p in pairs],
            [p[1] for p in pairs],
            [p[2] for p in pairs],
        )
    return len(seqs)


async def update_one(conn: Any, capture_id: str, patch: CapturePatch) -> StoredCapture | None:
    if not await _apply_patch(conn, [capture_id], patch):
        return None
    return await get_one(conn, capture_id, None, False)


async def update_where(conn: Any, where: CaptureFilter, patch: CapturePatch) -> int:
    return await _apply_patch(conn, await matching_ids(conn, where), patch)


# -- deletes ------------------------------------------------------------------------------------


async def delete_chunk(conn: Any, ids: Sequence[str]) -> int:
    """Hard delete up to ``DELETE_CHUNK`` captures; the number deleted."""
    rows = await conn.fetch(
        "DELETE FROM captures WHERE id = any($1::text[])"
        " RETURNING id, request_codec, request_manifest",
        list(ids),
    )
    refs: Counter[bytes] = Counter()
    for row in rows:
        refs.update(manifest_digests(request_manifest(row)))
    if refs:
        hashes = sorted(refs)
        await conn.execute(
            "UPDATE blobs b SET refs = b.refs - u.n"
            " FROM unnest($1::bytea[], $2::int8[]) AS u (hash, n) WHERE b.hash = u.hash",
            hashes,
            [refs[h] for h in hashes],
        )
        await conn.execute("DELETE FROM blobs WHERE refs <= 0 AND hash = any($1::bytea[])", hashes)
    return len(rows)
