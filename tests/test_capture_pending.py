"""A capture id handed out before its capture is stored: the admin API and the Stored
Completions API wait for it instead of answering 404 (proxy.capture_pending)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from proxy import capture_pending
from proxy.capture_pending import CapturePending
from proxy.tasks import spawn
from proxy.writer import CaptureWriter
from tests._admin import AUTH, TOKEN, UNKNOWN_ID

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
SLOW_FLUSH = 30  # seconds: without the wait, a capture would sit in the writer's queue


def _chat(base: str) -> str:
    response = httpx.post(base + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    return str(response.headers["x-stillroom-capture-id"])


@pytest.mark.parametrize("index", ["deferred", "inline"])
def test_feedback_right_after_the_response_finds_its_capture(start_proxy, mock_url, index):
    with (
        ExitStack() as stack,
        start_proxy(
            upstream=mock_url, admin_token=TOKEN, flush_interval=SLOW_FLUSH, capture_index=index
        ) as base,
    ):
        admin = stack.enter_context(httpx.Client(base_url=base, headers=AUTH, timeout=30))
        capture_id = _chat(base)
        started = time.monotonic()
        patched = admin.patch(f"/admin/captures/{capture_id}", json={"feedback": {"score": 1}})
        assert patched.status_code == 200, patched.text
        assert time.monotonic() - started < SLOW_FLUSH / 3  # the writer was asked to flush
        assert patched.json()["curation"]["feedback"] == {"score": 1.0, "note": None}
        assert admin.get(f"/admin/captures/{capture_id}").json()["id"] == capture_id

        other = _chat(base)
        assert admin.get(f"/admin/captures/{other}").status_code == 200

        gone = _chat(base)
        assert admin.delete(f"/admin/captures/{gone}").json()["deleted"] is True
        assert admin.get(f"/admin/captures/{gone}").status_code == 404


def test_an_unknown_id_with_nothing_on_the_way_is_404_at_once(start_proxy, mock_url):
    with (
        ExitStack() as stack,
        start_proxy(upstream=mock_url, admin_token=TOKEN, flush_interval=0.02) as base,
    ):
        admin = stack.enter_context(httpx.Client(base_url=base, headers=AUTH, timeout=30))
        _chat(base)
        deadline = time.monotonic() + 10
        while admin.get("/admin/captures").json()["data"] == []:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        missing = admin.get(f"/admin/captures/{UNKNOWN_ID}")
        assert missing.status_code == 404
        assert time.monotonic() - started < 1


def test_a_capture_the_store_cannot_take_yet_is_409_with_retry_after(
    start_proxy, mock_url, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(capture_pending, "SETTLE_S", 0.5)
    db = tmp_path / "proxy.db"
    with (
        ExitStack() as stack,
        start_proxy(upstream=mock_url, admin_token=TOKEN, database=str(db)) as base,
    ):
        admin = stack.enter_context(httpx.Client(base_url=base, headers=AUTH, timeout=30))
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the indexer cannot store meanwhile
        try:
            capture_id = _chat(base)
            waiting = admin.get(f"/admin/captures/{capture_id}")
            assert waiting.status_code == 409, waiting.text
            assert int(waiting.headers["retry-after"]) >= 1
            error = waiting.json()["error"]
            assert error["code"] == "capture_not_stored_yet" and error["param"] == "id"
            assert capture_id in error["message"]
        finally:
            lock.execute("COMMIT")
            lock.close()
        monkeypatch.setattr(capture_pending, "SETTLE_S", 10.0)
        assert admin.get(f"/admin/captures/{capture_id}").status_code == 200


def test_a_stored_completion_is_retrievable_right_after_it_was_made(start_proxy, mock_url):
    with (
        ExitStack() as stack,
        start_proxy(upstream=mock_url, admin_token=TOKEN, flush_interval=SLOW_FLUSH) as base,
    ):
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-canary-pending-0001")
        stack.enter_context(client)
        made = client.chat.completions.create(**CHAT)
        found = client.chat.completions.retrieve(made.id)
        assert found.id == made.id
        assert found.choices[0].message.content == made.choices[0].message.content


class _Writer:
    def __init__(self) -> None:
        self.queued_total = 0
        self.settled_total = 0
        self.flushes = 0

    def flush_soon(self) -> None:
        self.flushes += 1


class _Indexer:
    def __init__(self) -> None:
        self.stored_position = 0
        self.spool_end = 0
        self.backlog_bytes = 0
        self.lag_s = 12.3
        self.hurried_to = 0

    def hurry(self, until: int) -> None:
        self.hurried_to = max(self.hurried_to, until)

    def unhurry(self) -> None:
        self.hurried_to = 0


@pytest.mark.anyio
async def test_settle_waits_for_the_writer_then_the_indexer() -> None:
    writer, indexer = _Writer(), _Indexer()
    pending = CapturePending(writer, indexer)  # type: ignore[arg-type]
    assert not pending.busy() and await pending.settle(0.1)

    writer.queued_total = 3  # three captures queued
    assert pending.busy()
    task = spawn(pending.settle(5), name="settle")
    await asyncio.sleep(0.05)
    assert not task.done() and writer.flushes == 1
    writer.settled_total, indexer.spool_end = 3, 300  # written to the spool...
    indexer.backlog_bytes = 300
    await asyncio.sleep(0.05)
    assert not task.done() and indexer.hurried_to == 300  # ...but not indexed: hurried
    writer.queued_total = 5  # later captures are not waited for
    indexer.stored_position, indexer.backlog_bytes = 300, 0
    assert await asyncio.wait_for(task, 1) is True
    assert indexer.hurried_to == 0  # nobody waits any more


@pytest.mark.anyio
async def test_find_answers_409_when_the_captures_do_not_settle() -> None:
    writer, indexer = _Writer(), _Indexer()
    pending = CapturePending(writer, indexer)  # type: ignore[arg-type]
    indexer.spool_end = 100
    indexer.backlog_bytes = 100  # spooled, and the indexer does not move
    calls = []

    async def lookup() -> str | None:
        calls.append(1)
        return None

    with pytest.raises(capture_pending.CaptureNotStoredYet) as caught:
        await pending.find("abc", lookup, timeout_s=0.05)
    assert caught.value.status_code == 409 and caught.value.retry_after_s == 13
    assert "about 12 s behind" in caught.value.message and len(calls) == 1
    indexer.stored_position = 100
    assert await pending.find("abc", lookup, timeout_s=0.05) is None and len(calls) == 3


@pytest.mark.anyio
async def test_a_capture_stored_during_the_first_lookup_is_found() -> None:
    writer = _Writer()
    writer.queued_total = 1  # on its way when the lookup starts...
    pending = CapturePending(writer)  # type: ignore[arg-type]
    answers = [None, "found"]

    async def lookup() -> str | None:
        writer.settled_total = 1  # ...and stored while the first lookup read the store
        return answers.pop(0)

    assert await pending.find("abc", lookup, timeout_s=1) == "found"


@pytest.mark.anyio
async def test_waiters_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture_pending, "MAX_WAITERS", 1)
    writer = _Writer()
    writer.queued_total = 1  # never settles
    pending = CapturePending(writer)  # type: ignore[arg-type]

    async def lookup() -> None:
        return None

    first = spawn(pending.find("a", lookup, timeout_s=2), name="first")
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(capture_pending.CaptureNotStoredYet):
        await pending.find("b", lookup, timeout_s=2)
    assert time.monotonic() - started < 0.5  # at once, not after the timeout
    writer.settled_total = 1
    assert await asyncio.wait_for(first, 2) is None


def test_records_dropped_at_once_do_not_count_as_settled_in_order() -> None:
    """A record refused at submit settles at once, ahead of the queued ones: the FIFO count
    (settled_total against queued_total) leaves it out."""
    writer = CaptureWriter(
        _NoStore(),  # type: ignore[arg-type]
        max_queue=10,
        max_queue_bytes=4096,
        batch_size=10,
        flush_interval=1.0,
        logger=logging.getLogger("test"),
    )
    assert writer.submit(b"small")
    assert not writer.submit(b"x" * 10_000)  # too large for the queue
    assert writer.submitted_total == 2 and writer.queued_total == 1
    assert writer.settled_total == 0  # the queued one is not written yet


class _NoStore:
    async def write_batch(self, records: object) -> None:
        raise AssertionError("not started")
