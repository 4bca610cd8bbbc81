"""Retention: the purge loop with an injected clock and a short interval, and the real proxy
deleting captures older than STILLROOM_RETENTION_DAYS at start (T22)."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from proxy.retention import DAY_SECONDS, Retention
from storage.errors import StoreUnavailable
from storage.ids import new_capture_id
from storage.sqlite import SQLiteStore
from tests.conftest import make_capture

NOW = 1_800_000_000.0
TOKEN = "retention-admin-canary-5e0c2a9b7d1f4e36"


class PurgeLog:
    """A store that only knows ``purge_before``: records cutoffs, can fail the first calls."""

    def __init__(self, *, failures: int = 0, deleted: int = 2) -> None:
        self.cutoffs: list[float] = []
        self.failures = failures
        self.deleted = deleted
        self.called = asyncio.Event()

    async def purge_before(self, cutoff: float) -> int:
        self.cutoffs.append(cutoff)
        self.called.set()
        if len(self.cutoffs) <= self.failures:
            raise StoreUnavailable("disk I/O error")
        return self.deleted


async def wait_for_calls(store: PurgeLog, count: int) -> None:
    async with asyncio.timeout(5):
        while len(store.cutoffs) < count:
            store.called.clear()
            await store.called.wait()


@pytest.mark.anyio
async def test_purges_at_start_and_every_interval_with_the_clock_cutoff(caplog):
    caplog.set_level(logging.INFO, "stillroom.retention")
    store = PurgeLog()
    retention = Retention(store, days=1.5, interval=0.01, clock=lambda: NOW)  # type: ignore[arg-type]
    retention.start()
    await wait_for_calls(store, 3)
    await retention.stop()
    assert store.cutoffs[:3] == [NOW - 1.5 * DAY_SECONDS] * 3
    assert retention.deleted_total == 2 * len(store.cutoffs)
    assert "deleted 2 captures" in caplog.text
    calls = len(store.cutoffs)
    await asyncio.sleep(0.05)
    assert len(store.cutoffs) == calls  # stopped means stopped


@pytest.mark.anyio
async def test_survives_store_errors(caplog):
    caplog.set_level(logging.WARNING, "stillroom.retention")
    store = PurgeLog(failures=2, deleted=5)
    retention = Retention(store, days=1, interval=0.01, clock=lambda: NOW)  # type: ignore[arg-type]
    retention.start()
    await wait_for_calls(store, 3)
    await retention.stop()
    assert retention.deleted_total >= 5
    assert caplog.text.count("purge failed") == 2 and "disk I/O error" in caplog.text


@pytest.mark.anyio
async def test_stop_is_prompt_between_passes_and_safe_twice():
    store = PurgeLog(deleted=0)
    retention = Retention(store, days=1, interval=3600)  # type: ignore[arg-type]
    retention.start()
    retention.start()  # one loop, however often it is started
    await wait_for_calls(store, 1)
    started = time.monotonic()
    await retention.stop()
    await retention.stop()
    assert time.monotonic() - started < 1
    assert store.cutoffs == [pytest.approx(time.time() - DAY_SECONDS, abs=5)]


@pytest.mark.anyio
async def test_stop_cancels_a_pass_that_overruns(caplog):
    class Stuck(PurgeLog):
        async def purge_before(self, cutoff: float) -> int:
            await super().purge_before(cutoff)
            await asyncio.sleep(3600)
            return 0

    store = Stuck()
    retention = Retention(store, days=1)  # type: ignore[arg-type]
    retention.start()
    await wait_for_calls(store, 1)
    await retention.stop(timeout=0.05)
    assert "cancelled" in caplog.text


def test_the_proxy_purges_old_captures_at_start(start_proxy, mock_url, tmp_path):
    db = tmp_path / "retention.db"
    now = time.time()
    canary = "retention canary prompt 7f3a"
    old = [
        make_capture(
            id=new_capture_id(),
            created_at=now - 3 * DAY_SECONDS,
            request_body=(
                b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s %d"}]}'
                % (canary.encode(), i)
            ),
        )
        for i in range(3)
    ]
    fresh = [make_capture(id=new_capture_id(), created_at=now - 3600) for _ in range(2)]

    async def seed() -> None:
        async with SQLiteStore(str(db)) as store:
            await store.migrate()
            await store.write_batch(old + fresh)

    asyncio.run(seed())
    assert canary.encode() in b"".join(p.read_bytes() for p in tmp_path.glob("retention.db*"))
    with (
        start_proxy(
            upstream=mock_url, database=str(db), retention_days=1, admin_token=TOKEN
        ) as base,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http,
    ):
        deadline = time.monotonic() + 10
        while True:
            ids = {c["id"] for c in http.get("/admin/captures").json()["data"]}
            if ids == {r.id for r in fresh}:
                break
            assert time.monotonic() < deadline, ids
            time.sleep(0.02)
    files = b"".join(p.read_bytes() for p in tmp_path.glob("retention.db*"))
    assert canary.encode() not in files  # hard delete: gone from the database and WAL files
