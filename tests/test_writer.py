"""CaptureWriter: batching, exact drop accounting, failure recovery and draining on stop."""

from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from proxy.writer import DROP_REASONS, CaptureWriter, record_size
from storage.errors import StoreBusy, StoreError, StoreFull, StoreUnavailable
from storage.models import CaptureRecord
from storage.sqlite import SQLiteStore
from tests.conftest import make_capture

pytestmark = pytest.mark.anyio

LOG = logging.getLogger("tests.writer")


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.002)


def assert_balanced(writer: CaptureWriter) -> None:
    dropped = sum(writer.dropped_total.values())
    assert writer.submitted_total == writer.written_total + dropped + writer.queue_depth


class FakeStore:
    """Records batches; ``fail`` decides per call what to raise (None: succeed)."""

    def __init__(
        self, fail: Callable[[Sequence[CaptureRecord]], BaseException | None] | None = None
    ):
        self.batches: list[list[CaptureRecord]] = []
        self.calls = 0
        self.fail = fail
        self.gate: anyio.Event | None = None

    @property
    def ids(self) -> list[str]:
        return [r.id for batch in self.batches for r in batch]

    async def write_batch(self, records: Sequence[CaptureRecord]) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        error = self.fail(records) if self.fail else None
        if error is not None:
            raise error
        self.batches.append(list(records))

    async def migrate(self) -> list[str]:
        return []

    async def pending_migrations(self) -> list[str]:
        return []

    async def get(self, capture_id: str) -> CaptureRecord | None:
        return None

    async def count(self) -> int:
        return sum(len(b) for b in self.batches)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def make_writer(store: Any, **options: Any) -> CaptureWriter:
    settings: dict[str, Any] = {
        "max_queue": 1000,
        "max_queue_bytes": 64 * 1024 * 1024,
        "batch_size": 10,
        "flush_interval": 60.0,
        "logger": LOG,
        "retry_initial_s": 0.001,
        "retry_max_s": 0.01,
    }
    settings.update(options)
    return CaptureWriter(store, **settings)


# -- batching ----------------------------------------------------------------------------------


async def test_batches_by_size() -> None:
    store = FakeStore()
    writer = make_writer(store, batch_size=10, flush_interval=60.0)
    await writer.start()
    records = [make_capture() for _ in range(25)]
    for record in records:
        assert writer.submit(record)
    await eventually(lambda: writer.written_total == 20)
    assert [len(b) for b in store.batches] == [10, 10]
    assert writer.queue_depth == 5  # the rest waits for a full batch or the interval
    await writer.stop(deadline_s=5)
    assert [len(b) for b in store.batches] == [10, 10, 5]
    assert store.ids == [r.id for r in records]
    assert_balanced(writer)


async def test_batches_by_interval() -> None:
    store = FakeStore()
    writer = make_writer(store, batch_size=1000, flush_interval=0.05)
    await writer.start()
    for _ in range(3):
        writer.submit(make_capture())
    await eventually(lambda: writer.written_total == 3)
    assert [len(b) for b in store.batches] == [3]
    writer.submit(make_capture())
    await eventually(lambda: writer.written_total == 4)
    assert [len(b) for b in store.batches] == [3, 1]
    await writer.stop(deadline_s=5)


async def test_flush_writes_now_and_on_batch_reports() -> None:
    seen: list[tuple[float, int]] = []
    store = FakeStore()
    writer = make_writer(
        store, batch_size=1000, flush_interval=60.0, on_batch=lambda s, n: seen.append((s, n))
    )
    await writer.start()
    for _ in range(7):
        writer.submit(make_capture())
    assert await writer.flush(timeout_s=5)
    assert writer.written_total == 7 and writer.batches_total == 1
    assert len(seen) == 1 and seen[0][1] == 7 and seen[0][0] >= 0
    await writer.stop(deadline_s=5)


# -- queue limits --------------------------------------------------------------------------


async def test_queue_full_drops_are_counted_exactly() -> None:
    store = FakeStore()
    writer = make_writer(store, max_queue=10, batch_size=4)
    results = [writer.submit(make_capture()) for _ in range(25)]  # writer not started yet
    assert results == [True] * 10 + [False] * 15
    assert writer.dropped_total["queue_full"] == 15
    assert writer.queue_depth == 10
    assert_balanced(writer)
    await writer.start()
    await writer.stop(deadline_s=5)
    assert writer.written_total == 10 and len(store.ids) == 10
    assert_balanced(writer)


async def test_queue_byte_budget_and_too_large() -> None:
    record = make_capture()
    size = record_size(record)
    writer = make_writer(FakeStore(), max_queue_bytes=3 * size + 10)
    assert [writer.submit(make_capture()) for _ in range(5)] == [True] * 3 + [False] * 2
    assert writer.queue_bytes == 3 * size
    huge = make_capture(request_body=b"x" * (4 * size))
    assert not writer.submit(huge)
    assert writer.dropped_total == {
        **dict.fromkeys(DROP_REASONS, 0),
        "queue_full": 2,
        "too_large": 1,
    }
    assert_balanced(writer)
    await writer.stop(deadline_s=5)
    assert writer.written_total == 3 and writer.queue_bytes == 0


async def test_records_queue_and_drop_while_a_batch_is_retried() -> None:
    busy = True
    store = FakeStore(fail=lambda records: StoreBusy("locked") if busy else None)
    writer = make_writer(store, max_queue=50, batch_size=20, flush_interval=0.001)
    await writer.start()
    for _ in range(20):
        writer.submit(make_capture())
    await eventually(lambda: store.calls >= 3)  # the batch is being retried
    accepted = sum(writer.submit(make_capture()) for _ in range(100))
    assert accepted == 30  # 20 in flight + 30 queued = max_queue
    assert writer.dropped_total["queue_full"] == 70
    assert_balanced(writer)
    busy = False
    await eventually(lambda: writer.written_total == 50)
    assert writer.queue_depth == 0 and writer.queue_bytes == 0
    assert sum(writer.dropped_total.values()) == 70
    await writer.stop(deadline_s=5)
    assert_balanced(writer)


# -- store failures ------------------------------------------------------------------------


async def test_storage_full_is_counted_and_recovers() -> None:
    full = True
    store = FakeStore(fail=lambda records: StoreFull("disk full") if full else None)
    writer = make_writer(store, batch_size=5, flush_interval=0.001)
    await writer.start()
    for _ in range(12):
        writer.submit(make_capture())
    await eventually(lambda: writer.queue_depth == 0)
    assert writer.dropped_total["storage_full"] == 12
    assert writer.written_total == 0
    full = False  # space returns
    late = [make_capture() for _ in range(7)]
    for record in late:
        writer.submit(record)
    await eventually(lambda: writer.written_total == 7)
    assert store.ids == [r.id for r in late]
    await writer.stop(deadline_s=5)
    assert_balanced(writer)


async def test_storage_full_on_a_real_database(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "full.db", max_bytes=200 * 1024) as store:
        await store.migrate()
        writer = make_writer(store, batch_size=20, flush_interval=0.001)
        await writer.start()
        body = b'{"messages":[{"role":"user","content":"%s"}]}'
        for i in range(400):
            assert writer.submit(
                make_capture(request_body=body % random.randbytes(1500).hex().encode())
            )
            if i % 50 == 0:
                await writer.flush(timeout_s=10)
        assert await writer.flush(timeout_s=10)
        assert writer.dropped_total["storage_full"] > 0
        assert writer.written_total + writer.dropped_total["storage_full"] == 400
        assert await store.count() == writer.written_total
        await store.set_max_bytes(None)  # space returns: capture resumes at once
        for _ in range(30):
            writer.submit(make_capture())
        assert await writer.flush(timeout_s=10)
        assert await store.count() == writer.written_total
        await writer.stop(deadline_s=5)
        assert_balanced(writer)


async def test_locked_database_recovers(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    async with SQLiteStore(path, busy_timeout_s=0.02) as store:
        await store.migrate()
        attempts = 0
        real_write = store.write_batch

        async def counting_write(records: Sequence[CaptureRecord]) -> None:
            nonlocal attempts
            attempts += 1
            await real_write(records)

        store.write_batch = counting_write  # type: ignore[method-assign]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        writer = make_writer(store, batch_size=25, flush_interval=0.001)
        await writer.start()
        records = [make_capture() for _ in range(50)]
        for record in records:
            writer.submit(record)
        await eventually(lambda: attempts >= 3)
        assert writer.written_total == 0 and writer.queue_depth == 50
        other.execute("ROLLBACK")
        other.close()
        await eventually(lambda: writer.written_total == 50)
        assert sum(writer.dropped_total.values()) == 0
        assert await store.count() == 50
        assert await store.get(records[-1].id) == records[-1]
        await writer.stop(deadline_s=5)


async def test_a_bad_record_is_isolated_from_its_batch(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "bad.db") as store:
        await store.migrate()
        writer = make_writer(store, batch_size=8, flush_interval=0.001)
        await writer.start()
        good = [make_capture() for _ in range(7)]
        bad = make_capture(response={"not json": object()})
        for record in good[:3] + [bad] + good[3:]:
            writer.submit(record)
        assert await writer.flush(timeout_s=10)
        assert writer.dropped_total["storage_error"] == 1
        assert writer.written_total == 7 and await store.count() == 7
        await writer.stop(deadline_s=5)
        assert_balanced(writer)


@pytest.mark.parametrize(
    "error",
    [RuntimeError("weird"), KeyError("k"), ZeroDivisionError()],
)
async def test_weird_store_errors_never_escape(error: Exception) -> None:
    failing = True
    store = FakeStore(fail=lambda records: error if failing else None)
    writer = make_writer(store, batch_size=3, flush_interval=0.001, max_attempts=3)
    await writer.start()
    for _ in range(6):
        assert writer.submit(make_capture())
    await eventually(lambda: writer.queue_depth == 0)
    assert writer.dropped_total["storage_error"] == 6
    assert store.calls == 6  # two batches, three attempts each
    failing = False
    writer.submit(make_capture())
    await eventually(lambda: writer.written_total == 1)  # the writer task survived
    await writer.stop(deadline_s=5)
    assert_balanced(writer)


async def test_submit_never_raises_on_odd_input() -> None:
    store = FakeStore()
    writer = make_writer(store, batch_size=2, flush_interval=0.001)
    assert writer.submit(None)  # type: ignore[arg-type]
    assert writer.submit("not a record")  # type: ignore[arg-type]
    await writer.stop(deadline_s=5)
    assert_balanced(writer)


async def test_a_failing_on_batch_hook_does_not_stop_captures() -> None:
    def hook(seconds: float, n: int) -> None:
        raise ValueError("metrics bug")

    writer = make_writer(FakeStore(), batch_size=1, on_batch=hook)
    await writer.start()
    for _ in range(3):
        writer.submit(make_capture())
    await eventually(lambda: writer.written_total == 3)
    await writer.stop(deadline_s=5)


# -- stop ----------------------------------------------------------------------------------


async def test_stop_drains_everything(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "drain.db") as store:
        await store.migrate()
        writer = make_writer(store, batch_size=200, flush_interval=60.0, max_queue=10_000)
        await writer.start()
        records = [make_capture() for _ in range(1234)]
        for record in records:
            assert writer.submit(record)
        await writer.stop(deadline_s=30)
        assert writer.written_total == 1234 and writer.queue_depth == 0
        assert sum(writer.dropped_total.values()) == 0
        assert await store.count() == 1234
        assert not writer.submit(make_capture())
        assert writer.dropped_total["shutdown"] == 1
        assert_balanced(writer)


async def test_stop_without_start_still_drains() -> None:
    store = FakeStore()
    writer = make_writer(store)
    for _ in range(5):
        writer.submit(make_capture())
    await writer.stop(deadline_s=5)
    assert writer.written_total == 5


async def test_stop_deadline_counts_what_is_left() -> None:
    store = FakeStore(fail=lambda records: StoreBusy("locked forever"))
    writer = make_writer(store, batch_size=10, flush_interval=0.001, abandon_grace_s=1.0)
    await writer.start()
    for _ in range(35):
        writer.submit(make_capture())
    await eventually(lambda: store.calls >= 2)
    with anyio.fail_after(5):
        await writer.stop(deadline_s=0.1)
    assert writer.dropped_total["shutdown"] == 35
    assert writer.queue_depth == 0 and writer.queue_bytes == 0
    assert_balanced(writer)


async def test_stop_cancels_a_write_that_hangs() -> None:
    store = FakeStore()
    store.gate = anyio.Event()  # never set: the store hangs
    writer = make_writer(store, batch_size=5, flush_interval=0.001, abandon_grace_s=0.05)
    await writer.start()
    for _ in range(8):
        writer.submit(make_capture())
    await eventually(lambda: store.calls == 1)
    with anyio.fail_after(5):
        await writer.stop(deadline_s=0.05)
    assert writer.dropped_total["shutdown"] == 8
    assert_balanced(writer)


async def test_an_unavailable_store_keeps_records_queued_until_it_returns() -> None:
    """Issue 7: an outage holds records in the bounded queue, drops only the overflow, and the
    backlog drains once the store is back."""
    down = True
    store = FakeStore(fail=lambda records: StoreUnavailable("connection refused") if down else None)
    writer = make_writer(store, max_queue=30, batch_size=5, flush_interval=0.001, max_attempts=2)
    await writer.start()
    accepted = [r for r in (make_capture() for _ in range(40)) if writer.submit(r)]
    assert len(accepted) == 30 and writer.dropped_total["queue_full"] == 10
    await eventually(lambda: store.calls >= 20)  # well past max_attempts: still retrying
    assert writer.dropped_total["storage_error"] == 0
    assert writer.queue_depth == 30
    assert_balanced(writer)
    down = False
    await eventually(lambda: writer.queue_depth == 0)
    assert store.ids == [r.id for r in accepted]
    assert writer.written_total == 30
    assert writer.dropped_total == {**dict.fromkeys(writer.dropped_total, 0), "queue_full": 10}
    await writer.stop(deadline_s=5)
    assert_balanced(writer)


async def test_backoff_while_unavailable_is_capped() -> None:
    store = FakeStore(fail=lambda records: StoreUnavailable("down"))
    writer = make_writer(store, retry_initial_s=0.01, retry_max_s=0.04, flush_interval=0.001)
    await writer.start()
    writer.submit(make_capture())
    await anyio.sleep(0.5)
    # 0.01 + 0.02 + 0.04 + 0.04 …: about a dozen tries in half a second, not hundreds
    assert 5 <= store.calls <= 20
    await writer.stop(deadline_s=0.05)
    assert writer.dropped_total["shutdown"] == 1
    assert_balanced(writer)


# -- accounting under chaos ------------------------------------------------------------------


async def test_accounting_is_exact_under_random_failures() -> None:
    rng = random.Random(1234)
    outcomes: list[Callable[[], BaseException | None]] = [
        lambda: None,
        lambda: None,
        lambda: StoreFull("full"),
        lambda: StoreBusy("busy"),
        lambda: StoreUnavailable("io"),
        lambda: RuntimeError("odd"),
    ]
    store = FakeStore(fail=lambda records: rng.choice(outcomes)())
    writer = make_writer(store, max_queue=40, batch_size=7, flush_interval=0.001, max_attempts=2)
    await writer.start()
    submitted = []
    for _ in range(60):
        for _ in range(rng.randrange(1, 20)):
            record = make_capture()
            if writer.submit(record):
                submitted.append(record.id)
            assert_balanced(writer)
        await anyio.sleep(0)  # let the writer take turns
    await writer.stop(deadline_s=10)
    assert_balanced(writer)
    assert writer.queue_depth == 0
    assert writer.written_total == len(store.ids) == len(set(store.ids))
    assert set(store.ids) <= set(submitted)
    assert all(v >= 0 for v in writer.dropped_total.values())


# -- odds and ends ---------------------------------------------------------------------------


async def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError):
        make_writer(FakeStore(), max_queue=0)
    writer = make_writer(FakeStore())
    await writer.start()
    with pytest.raises(RuntimeError):
        await writer.start()
    await writer.stop(deadline_s=5)


async def test_flush_reports_a_timeout() -> None:
    store = FakeStore()
    store.gate = anyio.Event()
    writer = make_writer(store, batch_size=5)
    await writer.start()
    writer.submit(make_capture())
    assert not await writer.flush(timeout_s=0.05)
    store.gate.set()
    assert await writer.flush(timeout_s=5)
    await writer.stop(deadline_s=5)


async def test_a_writer_bug_costs_one_batch_not_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    writer = make_writer(store, batch_size=4, flush_interval=0.001)
    real_deliver = writer._deliver
    calls = 0

    async def buggy_once(records: list[CaptureRecord]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise AttributeError("bug")
        await real_deliver(records)

    monkeypatch.setattr(writer, "_deliver", buggy_once)
    await writer.start()
    for _ in range(4):
        writer.submit(make_capture())
    await eventually(lambda: writer.dropped_total["storage_error"] == 4)
    writer.submit(make_capture())
    await eventually(lambda: writer.written_total == 1)
    await writer.stop(deadline_s=5)
    assert_balanced(writer)


def test_drop_logs_are_rate_limited(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("proxy.writer.time.monotonic", lambda: now[0])
    writer = make_writer(FakeStore(), max_queue=1, log_interval_s=10.0)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for _ in range(6):
            writer.submit(make_capture())  # 1 queued, 5 dropped
        assert len(caplog.records) == 1  # the first drop; 4 held back
        now[0] += 11
        writer.submit(make_capture())
        assert len(caplog.records) == 2
        assert "and 4 more" in caplog.records[-1].getMessage()
        writer.submit(make_capture())  # held again
        writer._log.flush()
        assert "1 more capture(s) affected by queue_full" in caplog.records[-1].getMessage()
    assert writer.dropped_total["queue_full"] == 7


# -- partial batch writes (the spool reports how much of a failed batch it kept) ---------------


def _partial(error: StoreError, written: int) -> StoreError:
    error.written = written
    return error


@pytest.mark.parametrize("kind", ["full", "unavailable"])
async def test_a_partly_written_batch_is_counted_exactly(kind: str) -> None:
    store = FakeStore()
    calls: list[list[str]] = []

    async def write(records: Sequence[CaptureRecord]) -> None:
        calls.append([r.id for r in records])
        if len(calls) == 1:  # the first two of five made it, then the disk filled / failed
            store.batches.append(list(records[:2]))
            cls = StoreFull if kind == "full" else StoreUnavailable
            raise _partial(cls("capture spool: no space"), 2)
        store.batches.append(list(records))

    writer = make_writer(store, batch_size=5, write=write)
    await writer.start()
    for i in range(5):
        writer.submit(make_capture(id=f"p{i}"))
    await writer.stop(deadline_s=5)
    assert_balanced(writer)
    if kind == "full":  # the rest is dropped, and only the rest
        assert writer.written_total == 2 and writer.dropped_total["storage_full"] == 3
        assert store.ids == ["p0", "p1"]
    else:  # the rest is retried, and only the rest
        assert writer.written_total == 5 and sum(writer.dropped_total.values()) == 0
        assert calls[1] == ["p2", "p3", "p4"] and store.ids == [f"p{i}" for i in range(5)]
