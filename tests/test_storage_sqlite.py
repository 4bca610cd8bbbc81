"""SQLiteStore against real database files: round trips, idempotency, schema, dedupe, failures."""

from __future__ import annotations

import base64
import os
import random
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from storage import migrations
from storage.base import NullStore, Store
from storage.errors import StoreBusy, StoreError, StoreFull, StoreUnavailable
from storage.ids import new_capture_id
from storage.models import Usage
from storage.sqlite import SQLiteStore, translated_errors
from tests.conftest import make_capture

pytestmark = pytest.mark.anyio

SSE = (
    b'data: {"id":"chatcmpl-9","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":"Hi"}}]}\n\n'
    b'data: {"id":"chatcmpl-9","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":"{}"}}]}'
    b',"finish_reason":null}]}\n\n'
    b"data: [DONE]\n\n"
) * 20


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "captures.db") as s:
        await s.migrate()
        yield s


def _prompt(n: int = 2048, seed: int = 7) -> str:
    """Text that deflate cannot shrink much, so savings measured come from dedupe."""
    return base64.b64encode(random.Random(seed).randbytes(n))[:n].decode()


def _chat_body(system: str, user: str) -> bytes:
    return (
        b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"'
        + system.encode()
        + b'"},{"role":"user","content":"'
        + user.encode()
        + b'"}],"temperature":0.2}'
    )


# -- round trip ------------------------------------------------------------------------------


async def test_round_trip_of_every_field(store: SQLiteStore) -> None:
    streamed = make_capture(
        created_at=1_712_345_678.123456,
        endpoint="responses",
        path="/v1/responses",
        requested_model="gpt-4.1",
        returned_model="gpt-4.1-2025-04-14",
        stream=True,
        request_body=_chat_body(_prompt(), "weather?") + b"\xff\x00 not utf-8",
        response_body=SSE,
        response_truncated=True,
        response_content_type="text/event-stream; charset=utf-8",
        response={"id": "resp_1", "output": [{"type": "message"}], "n": 2**70, "x": 1e-300},
        status=200,
        outcome="client_disconnected",
        error="client went away after 3 events",
        latency_ms=1234.5,
        ttft_ms=0.25,
        usage=Usage(1, 2, 3, 4, 5),
        tags={"team": "search", "task": "summarize", "ünïcode": "välue ☃"},
        upstream_request_id="req_abc",
        retry_count=2,
        key_fingerprint="fp_deadbeef",
        response_id="resp_1",
        previous_response_id="resp_0",
        has_tool_calls=True,
    )
    sparse = make_capture(
        requested_model=None,
        returned_model=None,
        request_body=b"",
        response_body=b"",
        response_content_type=None,
        response=None,
        status=None,
        outcome="upstream_timeout",
        error="upstream timeout",
        latency_ms=None,
        ttft_ms=None,
        usage=Usage(),
        tags={},
        upstream_request_id=None,
        retry_count=None,
        key_fingerprint=None,
        response_id=None,
        previous_response_id=None,
    )
    non_finite = make_capture(
        response={"score": float("inf"), "ok": True, "v": [1, 1.0], "s": "lone \ud800 surrogate"}
    )
    plain = make_capture()  # response equals the parsed body: stored once
    records = [streamed, sparse, non_finite, plain]
    await store.write_batch(records)

    for record in records:
        got = await store.get(record.id)
        assert got == record
        assert got is not None
        assert got.request_body == record.request_body
        assert got.response_body == record.response_body
        assert type(got.created_at) is float
    with sqlite3.connect(store.path) as db:
        codecs = dict(db.execute("SELECT id, response_codec FROM captures"))
        json_codecs = dict(db.execute("SELECT id, response_json_codec FROM captures"))
    assert codecs[streamed.id] == 1  # a long SSE transcript is deflated
    assert codecs[plain.id] == 0  # a short body is not worth it
    assert json_codecs[plain.id] == 2  # equal to the parsed body: stored once
    assert json_codecs[streamed.id] == 3  # an int over 64 bits: written by the stdlib
    assert json_codecs[non_finite.id] == 3
    assert json_codecs[sparse.id] is None
    got_plain = await store.get(plain.id)
    assert got_plain is not None and got_plain.response is not None
    assert list(got_plain.response) == list(plain.response or {})  # key order kept
    assert await store.get(new_capture_id()) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"role"{"role"{"type""input":"tools":',
        b'{  "role": "system", "content": "x"}' * 40,
        b'[{"content":"a"},{"type":"b"}]' * 30,
        os.urandom(5000),
        b'{"role":"user","content":"' + b"forty kilobytes of text " * 1700 + b'"}',
    ],
)
async def test_request_body_is_byte_exact_whatever_the_cuts(
    store: SQLiteStore, body: bytes
) -> None:
    record = make_capture(request_body=body)
    await store.write_batch([record])
    got = await store.get(record.id)
    assert got is not None and got.request_body == body


# -- idempotency, concurrency ----------------------------------------------------------------


async def test_writes_are_idempotent(store: SQLiteStore, tmp_path: Path) -> None:
    record = make_capture(request_body=_chat_body(_prompt(), "unique question"))
    await store.write_batch([record, record])
    await store.write_batch([record])
    assert await store.count() == 1
    with sqlite3.connect(tmp_path / "captures.db") as db:
        assert db.execute("SELECT max(refs) FROM blobs").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM capture_tags").fetchone()[0] == 1


async def test_concurrent_batches_all_land(store: SQLiteStore) -> None:
    batches = [[make_capture() for _ in range(30)] for _ in range(5)]
    async with anyio.create_task_group() as tg:
        for batch in batches:
            tg.start_soon(store.write_batch, batch)
    assert await store.count() == 150


async def test_cancelled_write_leaves_the_store_usable(store: SQLiteStore) -> None:
    batch = [make_capture(request_body=_chat_body(_prompt(seed=i), "q")) for i in range(400)]
    with anyio.move_on_after(0.01):
        await store.write_batch(batch)
    assert await store.count() in (0, 400)  # one transaction: all or nothing
    await store.write_batch([make_capture()])
    assert await store.count() in (1, 401)


# -- migrations and schema -------------------------------------------------------------------


async def test_migrations_from_blank(tmp_path: Path) -> None:
    names = [m.name for m in migrations.MIGRATIONS]
    assert names[0] == "m001_captures"
    async with SQLiteStore(tmp_path / "blank.db") as s:
        assert await s.pending_migrations() == names
        assert await s.migrate() == names
        assert await s.pending_migrations() == []
        assert await s.migrate() == []
    with sqlite3.connect(tmp_path / "blank.db") as db:
        assert [r[0] for r in db.execute("SELECT name FROM _migrations")] == names
        assert migrations.pending(db) == []


def test_pending_is_read_only(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "untouched.db") as db:
        assert migrations.pending(db) == [m.name for m in migrations.MIGRATIONS]
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


EXPECTED_COLUMNS = {
    "install": ["id", "secret", "created_at"],
    "captures": [
        "seq", "id", "created_at", "endpoint", "method", "path", "model", "requested_model",
        "returned_model", "stream", "status", "outcome", "error", "latency_ms", "ttft_ms",
        "input_tokens", "output_tokens", "total_tokens", "cached_tokens", "reasoning_tokens",
        "has_tool_calls", "response_id", "previous_response_id", "upstream_request_id",
        "retry_count", "key_fingerprint", "request_size", "request_codec", "request_manifest",
        "response_size",
        "response_truncated", "response_content_type", "response_codec", "response_body",
        "response_json_codec", "response_json",
        "feedback_score", "feedback_note", "excluded", "corrected_response", "curated_at",
    ],
    "search_partitions": ["part"],
    "datasets": ["id", "name", "state", "created_at", "info"],
    "dataset_items": ["dataset_id", "position", "capture_id", "split", "content_hash"],
    "dataset_pairs": ["dataset_id", "position", "split", "kind", "preferred_id", "rejected_id"],
    "capture_tags": ["seq", "key", "value"],
    "blobs": ["id", "hash", "refs", "codec", "size", "data"],
    "_migrations": ["name", "applied_at"],
    "training_jobs": [
        "id", "backend", "status", "dataset", "dataset_hash", "base_model", "method",
        "hyperparameters", "suffix", "seed", "provider_url", "provider_job_id", "provider_files",
        "fine_tuned_model", "error", "created_at", "updated_at", "finished_at",
    ],
    "training_job_events": [
        "seq", "job_id", "created_at", "level", "message", "data", "source_id",
    ],
    "documents": ["kind", "id", "version", "created_at", "updated_at", "body"],
    "document_items": ["seq", "kind", "parent", "created_at", "body"],
    "capture_spool": ["id", "position"],
}  # fmt: skip
EXPECTED_INDEXES = {
    "captures_created_at": ["created_at"],
    "captures_model": ["model"],
    "captures_response_id": ["response_id"],
    "captures_previous_response_id": ["previous_response_id"],
    "capture_tags_key_value": ["key", "value"],
    "documents_by_update": ["kind", "updated_at"],
    "document_items_by_parent": ["kind", "parent", "seq"],
}


async def test_exact_schema(store: SQLiteStore, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "captures.db") as db:
        tables = {
            r[0]
            for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith("sqlite_")
        }
        assert tables == set(EXPECTED_COLUMNS)
        for table, columns in EXPECTED_COLUMNS.items():
            assert [r[1] for r in db.execute(f"PRAGMA table_info({table})")] == columns
        named = {
            r[0]: r[1]
            for r in db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'")
            if not r[0].startswith("sqlite_autoindex")
        }
        assert set(named) == set(EXPECTED_INDEXES)
        for index, columns in EXPECTED_INDEXES.items():
            assert [r[2] for r in db.execute(f"PRAGMA index_info({index})")] == columns
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- content-addressed dedupe ----------------------------------------------------------------


async def test_shared_system_prompt_is_stored_once(store: SQLiteStore, tmp_path: Path) -> None:
    system = _prompt(2048)
    records = [
        make_capture(request_body=_chat_body(system, f"question number {i}: what now?"))
        for i in range(50)
    ]
    await store.write_batch(records[:20])
    await store.write_batch(records[20:])  # sharing works across batches too
    naive = sum(len(r.request_body) for r in records)
    with sqlite3.connect(tmp_path / "captures.db") as db:
        blob_bytes = db.execute("SELECT sum(length(data)) FROM blobs").fetchone()[0]
        ref_bytes = db.execute("SELECT sum(length(request_manifest)) FROM captures").fetchone()[0]
        assert db.execute("SELECT max(refs) FROM blobs").fetchone()[0] == 50
    stored = blob_bytes + ref_bytes
    assert naive > 50 * 2048
    assert stored < naive / 10, (stored, naive)  # about one prompt + 50 short questions
    for record in (records[0], records[49]):
        got = await store.get(record.id)
        assert got is not None and got.request_body == record.request_body


# -- failures ----------------------------------------------------------------------------------


async def test_disk_full_raises_store_full_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "small.db"
    async with SQLiteStore(path, max_bytes=320 * 1024) as s:  # PRAGMA max_page_count
        await s.migrate()
        written = []
        with pytest.raises(StoreFull):
            for i in range(200):
                batch = [
                    make_capture(request_body=_chat_body(_prompt(seed=i * 10 + j), "q"))
                    for j in range(10)
                ]
                await s.write_batch(batch)
                written.extend(batch)
        assert written, "some batches fit before the cap"
        assert await s.count() == len(written)  # the failed batch left nothing behind
        got = await s.get(written[-1].id)
        assert got == written[-1]
        await s.set_max_bytes(None)  # space returns
        late = make_capture()
        await s.write_batch([late])
        assert await s.get(late.id) == late
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_locked_database_raises_store_busy(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    async with SQLiteStore(path, busy_timeout_s=0.05) as s:
        await s.migrate()
        await s.write_batch([make_capture()])
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreBusy):
                await s.write_batch([make_capture()])
            assert await s.count() == 1  # WAL: readers are not blocked
        finally:
            other.execute("ROLLBACK")
            other.close()
        await s.write_batch([make_capture()])
        assert await s.count() == 2


async def test_database_files_are_private(store: SQLiteStore, tmp_path: Path) -> None:
    await store.write_batch([make_capture()])
    for name in ("captures.db", "captures.db-wal", "captures.db-shm"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


async def test_closed_or_unopenable_store_is_unavailable(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "c.db")
    await s.migrate()
    await s.close()
    await s.close()
    with pytest.raises(StoreUnavailable):
        await s.write_batch([make_capture()])
    with pytest.raises(StoreUnavailable):
        await SQLiteStore(tmp_path / "missing-dir" / "x.db").ping()
    with pytest.raises(ValueError):
        SQLiteStore(":memory:")


async def test_null_store_keeps_nothing() -> None:
    s = NullStore()
    assert await s.migrate() == []
    assert await s.pending_migrations() == []
    await s.write_batch([make_capture()])
    assert await s.count() == 0
    assert await s.get("anything") is None
    await s.ping()
    await s.close()


async def test_response_objects_in_every_encoding(store: SQLiteStore) -> None:
    big = {"id": "chatcmpl-big", "choices": [{"index": i, "text": "word " * 40} for i in range(30)]}
    records = [
        make_capture(stream=True, response_body=SSE, response={"id": "chatcmpl-9", "ok": True}),
        make_capture(stream=True, response_body=SSE, response=big),  # large: deflated JSON
        make_capture(response_body=b'{"id": "cut off', response={"id": "x"}),  # body not JSON
    ]
    await store.write_batch(records)
    for record in records:
        assert await store.get(record.id) == record
    with sqlite3.connect(store.path) as db:
        codecs = [
            db.execute("SELECT response_json_codec FROM captures WHERE id = ?", (r.id,)).fetchone()[
                0
            ]
            for r in records
        ]
    assert codecs == [0, 1, 0]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("request_manifest", b"\x07garbage"),
        ("request_manifest", b"\x01\x00\x00\x00\x09short"),
        ("request_size", 1),
        ("response_codec", 9),
        ("response_json_codec", 9),
    ],
)
async def test_a_damaged_row_raises_store_error(
    store: SQLiteStore, column: str, value: object
) -> None:
    record = make_capture()
    await store.write_batch([record])
    with sqlite3.connect(store.path) as db:
        db.execute(f"UPDATE captures SET {column} = ? WHERE id = ?", (value, record.id))
    with pytest.raises(StoreError) as caught:
        await store.get(record.id)
    assert not isinstance(caught.value, StoreUnavailable)


def _sqlite_error(cls: type[sqlite3.Error], code: int | None, text: str = "boom") -> sqlite3.Error:
    exc = cls(text)
    if code is not None:
        exc.sqlite_errorcode = code
        exc.sqlite_errorname = f"CODE_{code}"
    return exc


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_sqlite_error(sqlite3.OperationalError, 13), StoreFull),
        (_sqlite_error(sqlite3.OperationalError, 5), StoreBusy),
        (_sqlite_error(sqlite3.OperationalError, 5 | (3 << 8)), StoreBusy),  # BUSY_SNAPSHOT
        (_sqlite_error(sqlite3.OperationalError, 6), StoreBusy),
        (_sqlite_error(sqlite3.OperationalError, 10 | (3 << 8)), StoreUnavailable),  # IOERR_WRITE
        (_sqlite_error(sqlite3.DatabaseError, 11), StoreUnavailable),
        (
            _sqlite_error(sqlite3.ProgrammingError, None, "Cannot operate on a closed database."),
            StoreUnavailable,
        ),
        (_sqlite_error(sqlite3.IntegrityError, 19), StoreError),
        (ValueError("Connection closed"), StoreUnavailable),
        (ValueError("something else"), StoreError),
        (PermissionError(13, "Permission denied"), StoreUnavailable),
    ],
)
def test_driver_errors_map_onto_the_store_tree(
    error: Exception, expected: type[StoreError]
) -> None:
    with pytest.raises(expected) as caught:
        with translated_errors():
            raise error
    assert type(caught.value) is expected
    assert caught.value.__cause__ is error


async def test_ping_and_size_cap_changes(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "p.db") as s:
        await s.ping()
        await s.set_max_bytes(10 * 1024 * 1024)
        await s.migrate()
        await s.write_batch([make_capture()])
        assert await s.count() == 1
    with pytest.raises(StoreUnavailable):
        await s.ping()
    await s.write_batch([])  # nothing to do, even when closed


def test_backends_satisfy_the_store_protocol(tmp_path: Path) -> None:
    stores: list[Store] = [NullStore(), SQLiteStore(tmp_path / "p.db")]  # checked by mypy
    assert all(callable(s.write_batch) for s in stores)
