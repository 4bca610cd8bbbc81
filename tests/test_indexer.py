"""Deferred capture indexing: frames packed on the request path, the indexer process building
and storing them exactly once (proxy.frames, proxy.indexer)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import struct
import time
from pathlib import Path

import httpx
import pytest

from proxy import frames
from proxy.capture import CaptureDrops, CapturePolicy
from proxy.capture_indexer import CaptureIndexer
from proxy.indexer import (
    CAPTURE_ERROR,
    INDEXED,
    POSITION,
    SKIPPED_BYTES,
    STORAGE_ERROR,
    IndexerOptions,
    _Indexer,
    _over_bounds,
    _ServerLoad,
)
from proxy.records import build_record
from proxy.settings import SettingsError, load_settings
from storage import spool
from storage.errors import StoreBusy, StoreError
from storage.sqlite import SQLiteStore
from tests.conftest import make_copy

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
)


class _Sink:
    def __init__(self) -> None:
        self.items: list[object] = []

    def submit(self, item: object) -> bool:
        self.items.append(item)
        return True


def test_frames_round_trip_every_field() -> None:
    copy = make_copy(
        capture_id="c-frame",
        created_at=1_760_000_000.123456,
        response_body=ANSWER,
        tags={"task": "x", "ü": "✓"},
        retry_count=2,
        key_fingerprint="kf_abc",
        ttft_ms=12.5,
        error="boom",
        content_encoding="gzip",
    )
    assert frames.decode(frames.encode(copy)) == copy


def _framed(head: bytes, version: int = frames.VERSION) -> bytes:
    return struct.pack("<III", version, len(head), 0) + head


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (b"", "too short"),
        (b"\x01\x00", "too short"),
        (_framed(b"[]", version=9), "unknown frame version 9"),
        (frames.encode(make_copy())[:20], "shorter than its prefix"),
        (_framed(b"{not json"), "bad frame header"),
        (_framed(b"[1, 2]"), "wrong shape"),
    ],
)
def test_bad_frames_are_refused_clearly(bad: bytes, why: str) -> None:
    with pytest.raises(frames.FrameError, match=why):
        frames.decode(bad)


def test_the_tee_packs_what_frames_encode_would() -> None:
    sink = _Sink()
    policy = CapturePolicy(
        sink,  # type: ignore[arg-type]
        max_bytes=1 << 20,
        fingerprint_secret=b"s" * 32,
        drops=CaptureDrops(),
        deferred=True,
    )
    scope = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"authorization", b"Bearer sk-x"), (b"x-stainless-retry-count", b"1")],
    }
    tee = policy(scope, b'{"model":"m"}', {b"x-stillroom-tags": b"a=b"})
    assert tee is not None
    tee.on_response_start(200, [(b"content-type", b"application/json"), (b"x-request-id", b"r")])
    tee.on_chunk(ANSWER)
    tee.on_end("completed", None, 0.002)
    [packed] = sink.items
    copy = tee.copy()
    assert copy is not None and isinstance(packed, bytes)
    assert packed == frames.encode(copy)
    assert tee.record == build_record(copy)  # routing still gets the record, built on demand


def options(db: Path, **kw: object) -> IndexerOptions:
    return IndexerOptions(path=str(db), **kw)  # type: ignore[arg-type]


async def migrated(db: Path) -> None:
    async with SQLiteStore(db) as store:
        await store.migrate()


def spooled(db: Path, copies: list, segment_bytes: int = spool.SEGMENT_BYTES) -> int:
    writer = spool.SpoolWriter(spool.spool_dir(str(db)), segment_bytes=segment_bytes)
    writer.append([frames.encode(c) for c in copies])
    writer.close()
    return writer.end


def stored_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM captures ORDER BY seq")]


def test_each_spooled_exchange_becomes_one_capture(tmp_path: Path) -> None:
    db = tmp_path / "db"
    asyncio.run(migrated(db))
    copies = [make_copy(capture_id=f"c{i}", response_body=ANSWER) for i in range(7)]
    end = spooled(db, copies, segment_bytes=500)
    counters = [0] * 8
    indexer = _Indexer(options(db, batch_size=3), counters)
    while indexer.step():
        pass
    assert stored_ids(db) == [c.capture_id for c in copies]
    assert counters[INDEXED] == 7 and counters[POSITION] == end
    with sqlite3.connect(db) as conn:
        assert spool.stored_position(conn) == end
    assert len(spool.segments(spool.spool_dir(str(db)))) == 1  # read segments erased
    indexer.close()
    # A restart resumes at the stored position: nothing is stored twice.
    again = _Indexer(options(db), [0] * 8)
    assert not again.step()
    again.close()
    assert len(stored_ids(db)) == 7


def test_a_torn_end_is_stored_past_so_the_backlog_empties(tmp_path: Path) -> None:
    """A crash mid-write leaves a torn frame at the end of a segment; the position is stored
    past it though no capture follows (else the backlog and lag would never be empty)."""
    db = tmp_path / "db"
    asyncio.run(migrated(db))
    spooled(db, [make_copy(capture_id=f"t{i}", response_body=ANSWER) for i in range(2)])
    folder = spool.spool_dir(str(db))
    path = spool.segments(folder)[-1][1]
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) - 3)  # the second frame is torn
    after = spool.SpoolWriter(folder)  # the next start seals it; nothing spooled since
    end = after.end
    after.close()
    counters = [0] * 8
    indexer = _Indexer(options(db), counters)
    while indexer.step():
        pass
    assert stored_ids(db) == ["t0"]
    assert counters[POSITION] == end and counters[SKIPPED_BYTES] > 0
    assert indexer.backlog() == 0
    with sqlite3.connect(db) as conn:
        assert spool.stored_position(conn) == end
    indexer.close()


def test_a_crash_after_storing_stores_nothing_twice(tmp_path: Path) -> None:
    """The position is stored with the captures; a batch stored again is skipped anyway."""
    db = tmp_path / "db"
    asyncio.run(migrated(db))
    system = {"role": "system", "content": "You are a careful assistant. " * 100}
    body = json.dumps({**CHAT, "messages": [system, {"role": "user", "content": "hi"}]}).encode()
    copies = [
        make_copy(capture_id=f"c{i}", request_body=body, response_body=ANSWER) for i in range(4)
    ]
    end = spooled(db, copies)
    first = _Indexer(options(db), [0] * 8)
    first.step()
    first.close()
    with sqlite3.connect(db) as conn:  # as if the position had not been written
        conn.execute("UPDATE capture_spool SET position = 0")
    counters = [0] * 8
    again = _Indexer(options(db), counters)
    again.step()
    again.close()
    assert stored_ids(db) == ["c0", "c1", "c2", "c3"] and counters[POSITION] == end
    with sqlite3.connect(db) as conn:  # the shared system prompt: one blob, one ref a capture
        assert conn.execute("SELECT refs FROM blobs").fetchall() == [(4,)]


def test_unbuildable_and_rejected_exchanges_are_counted_and_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "db"
    asyncio.run(migrated(db))
    writer = spool.SpoolWriter(spool.spool_dir(str(db)))
    good = [make_copy(capture_id=f"ok{i}", response_body=ANSWER) for i in range(5)]
    poison = make_copy(capture_id="poison", response_body=ANSWER)
    writer.append(
        [frames.encode(good[0]), b"not a frame", frames.encode(good[1]), frames.encode(poison)]
        + [frames.encode(c) for c in good[2:]]
    )
    writer.close()

    import proxy.indexer as indexer_module

    real = indexer_module.encode_records

    def picky(records):
        if any(r.id == "poison" for r in records):
            raise StoreError("cannot encode capture batch: poison")
        return real(records)

    monkeypatch.setattr(indexer_module, "encode_records", picky)
    counters = [0] * 8
    indexer = _Indexer(options(db), counters)
    indexer.step()
    assert stored_ids(db) == [c.capture_id for c in good]
    assert counters[INDEXED] == 5
    assert counters[CAPTURE_ERROR] == 1  # the frame that is not one
    assert counters[STORAGE_ERROR] == 1  # the record the store refused
    assert counters[POSITION] == writer.end
    indexer.close()


def test_a_locked_database_keeps_the_spool_for_later(tmp_path: Path) -> None:
    db = tmp_path / "db"
    asyncio.run(migrated(db))
    spooled(db, [make_copy(capture_id="c0", response_body=ANSWER)])
    counters = [0] * 8
    indexer = _Indexer(options(db, busy_timeout_s=0.05), counters)
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreBusy):
            indexer.step()
        assert counters[INDEXED] == counters[POSITION] == 0
    finally:
        lock.execute("COMMIT")
        lock.close()
    indexer.step()
    assert stored_ids(db) == ["c0"] and counters[INDEXED] == 1
    indexer.close()


def test_bounds_raise_the_priority_until_half_caught_up() -> None:
    o = IndexerOptions(path="x", max_lag_s=60, max_backlog_bytes=1000)
    assert not _over_bounds(o, False, 40, 600)
    assert _over_bounds(o, False, 61, 100) and _over_bounds(o, False, 1, 1001)
    assert _over_bounds(o, True, 40, 100)  # was over: still over half of the lag bound
    assert _over_bounds(o, True, 1, 600)
    assert not _over_bounds(o, True, 29, 499)


def test_the_indexer_sees_when_the_proxy_is_busy() -> None:
    load = _ServerLoad(os.getpid())
    assert not load.busy(0.5)  # the first look only primes it
    start = time.process_time()
    while time.process_time() - start < 0.1:  # 0.1 s of CPU, however long that takes
        pass
    assert load.busy(0.01)
    time.sleep(0.3)
    assert not load.busy(0.5)
    assert not _ServerLoad(None).busy(0.0)  # nothing to watch: never busy


def test_the_lag_is_known_before_anything_is_read(tmp_path: Path) -> None:
    db = tmp_path / "db"
    asyncio.run(migrated(db))
    spooled(db, [make_copy(capture_id="old", created_at=time.time() - 90, response_body=ANSWER)])
    indexer = _Indexer(options(db), [0] * 8)
    assert 89 < indexer.lag() < 120  # the busy gate needs it to know the bound is passed
    indexer.step()
    assert indexer.lag() == 0.0
    indexer.close()


def test_one_indexer_per_spool_the_next_waits(tmp_path: Path) -> None:
    db = tmp_path / "db"
    asyncio.run(migrated(db))
    first = _Indexer(options(db), [0] * 8)
    opened = []

    def second() -> None:
        opened.append(_Indexer(options(db), [0] * 8))

    import threading

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and not opened  # waiting for the reader lock
    first.close()
    thread.join(5)
    assert opened
    opened[0].close()


@pytest.mark.anyio
async def test_a_dead_indexer_is_restarted_and_a_stop_drains(tmp_path: Path) -> None:
    db = tmp_path / "db"
    await migrated(db)
    handle = CaptureIndexer(options(db), restart_after_s=0.1)
    await handle.start()
    try:
        old = handle._process.pid
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not (handle.restarts == 1 and handle.alive):
            assert time.monotonic() < deadline, "the indexer was not restarted"
            await asyncio.sleep(0.05)
        assert handle._process.pid != old
        end = spooled(db, [make_copy(capture_id="late", response_body=ANSWER)])
    finally:
        left = await handle.stop(deadline_s=10)
    assert left == 0 and not handle.alive
    assert stored_ids(db) == ["late"] and handle.stored_position == end


@pytest.mark.anyio
async def test_a_locked_database_is_retried_and_counted(tmp_path: Path) -> None:
    db = tmp_path / "db"
    await migrated(db)
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    handle = CaptureIndexer(options(db, busy_timeout_s=0.05, poll_s=0.02))
    await handle.start()
    try:
        spooled(db, [make_copy(capture_id="waited", response_body=ANSWER)])
        deadline = time.monotonic() + 10
        while handle.retries_total == 0:
            assert time.monotonic() < deadline, "the indexer never met the lock"
            await asyncio.sleep(0.02)
        assert handle.indexed_total == 0
        lock.execute("COMMIT")
        while handle.indexed_total == 0:
            assert time.monotonic() < deadline, "the indexer never stored after the lock"
            await asyncio.sleep(0.02)
    finally:
        if lock.in_transaction:
            lock.execute("COMMIT")
        lock.close()
        await handle.stop(deadline_s=10)
    assert stored_ids(db) == ["waited"] and handle.restarts == 0


@pytest.mark.anyio
async def test_a_hurry_indexes_past_the_busy_gate(tmp_path: Path) -> None:
    db = tmp_path / "db"
    await migrated(db)
    # busy_share -1: the proxy always counts as busy (after the first look, which has no
    # window yet and lets the first capture through)
    handle = CaptureIndexer(options(db, busy_share=-1.0, poll_s=0.02))
    await handle.start()
    try:
        writer = spool.SpoolWriter(spool.spool_dir(str(db)))
        now = time.time()  # (a capture from 1970 would be over the lag bound)
        writer.append(
            [frames.encode(make_copy(capture_id="first", response_body=ANSWER, created_at=now))]
        )
        deadline = time.monotonic() + 10
        while handle.indexed_total < 1:
            assert time.monotonic() < deadline, "the first capture was not indexed"
            await asyncio.sleep(0.02)
        writer.append(
            [frames.encode(make_copy(capture_id="second", response_body=ANSWER, created_at=now))]
        )
        await asyncio.sleep(0.5)
        assert handle.indexed_total == 1  # held back by the busy gate
        handle.hurry(writer.end)
        while handle.indexed_total < 2:
            assert time.monotonic() < deadline, "a hurry did not index the capture"
            await asyncio.sleep(0.02)
        handle.unhurry()
        writer.append(
            [frames.encode(make_copy(capture_id="third", response_body=ANSWER, created_at=now))]
        )
        await asyncio.sleep(0.5)
        assert handle.indexed_total == 2  # not hurried any more: held back again
        writer.close()
    finally:
        await handle.stop(deadline_s=10)
    assert stored_ids(db) == ["first", "second", "third"]  # the stop drains


def test_capture_index_setting() -> None:
    assert load_settings({}).capture_index == "deferred"
    assert load_settings({"STILLROOM_CAPTURE_INDEX": "Inline"}).capture_index == "inline"
    with pytest.raises(SettingsError, match="CAPTURE_INDEX"):
        load_settings({"STILLROOM_CAPTURE_INDEX": "later"})


def metric(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_the_server_indexes_its_spool_and_erases_it_on_a_graceful_stop(
    start_proxy, mock_url, tmp_path
):
    db = tmp_path / "proxy.db"
    with start_proxy(upstream=mock_url, database=str(db), flush_interval=0.02) as base:
        ids = [
            httpx.post(base + "/v1/chat/completions", json=CHAT).headers["x-stillroom-capture-id"]
            for _ in range(5)
        ]
        deadline = time.monotonic() + 10
        while len(stored_ids(db)) < 5:
            assert time.monotonic() < deadline, "the indexer never stored the captures"
            time.sleep(0.05)
        assert stored_ids(db) == ids
        assert metric(base, "stillroom_captures_written_total") == 5
        assert metric(base, "stillroom_captures_indexed_total") == 5
        assert metric(base, "stillroom_capture_index_backlog_bytes") == 0
        assert metric(base, "stillroom_capture_index_retries_total") == 0
        assert metric(base, "stillroom_capture_indexer_restarts_total") == 0
        assert os.path.isdir(spool.spool_dir(str(db)))
    assert not os.path.exists(spool.spool_dir(str(db)))  # all stored: nothing left behind


def test_inline_indexing_still_stores_what_a_deferred_run_left(start_proxy, mock_url, tmp_path):
    db = tmp_path / "proxy.db"
    asyncio.run(migrated(db))
    spooled(db, [make_copy(capture_id="left-over", response_body=ANSWER)])
    with start_proxy(upstream=mock_url, database=str(db), capture_index="inline") as base:
        deadline = time.monotonic() + 10
        while "left-over" not in stored_ids(db):
            assert time.monotonic() < deadline, "the spool left by a deferred run was not indexed"
            time.sleep(0.05)
        r = httpx.post(base + "/v1/chat/completions", json=CHAT)
        capture_id = r.headers["x-stillroom-capture-id"]
        deadline = time.monotonic() + 10
        while capture_id not in stored_ids(db):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert not os.path.exists(spool.spool_dir(str(db)))  # drained, then erased on the stop


def test_a_second_server_on_the_same_database_is_refused(start_proxy, mock_url, tmp_path):
    db = tmp_path / "proxy.db"
    with start_proxy(upstream=mock_url, database=str(db)):
        from proxy.app import create_app

        app = create_app(load_settings({}, database=str(db), upstream=mock_url))
        with pytest.raises(StoreError, match="one stillroom serve per database"):
            asyncio.run(app.startup())
