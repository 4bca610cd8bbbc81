"""Training jobs on /metrics: ``JobCounts`` (the snapshot read in the background, store failures
kept off /metrics), the collector's labels, and a real `stillroom serve` whose gauge follows
jobs made through the admin API on the `stillroom mock` fine-tuning provider."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import TrainingMetrics
from proxy.training.job_counts import JobCounts
from storage.base import NullStore
from storage.errors import StoreUnavailable
from storage.jobs import BACKENDS, JOB_STATUSES
from tests._admin import AUTH
from tests._training import make_training_db, training_settings

NOW = 1_800_000_000.0
STATUSES = (*JOB_STATUSES, "other")


class CountingStore:
    """A store that only knows ``count_jobs``: answers ``counts``, or fails while ``down``."""

    def __init__(self, counts: dict[tuple[str, str], int]) -> None:
        self.counts = counts
        self.down = False
        self.bug = False
        self.reads = 0
        self.read = asyncio.Event()

    async def count_jobs(self) -> dict[tuple[str, str], int]:
        self.reads += 1
        self.read.set()
        if self.down:
            raise StoreUnavailable("database is locked")
        if self.bug:
            raise RuntimeError("not a store error")
        return dict(self.counts)


def samples(exposition: str) -> dict[str, dict[tuple[str, ...], float]]:
    """Sample name -> label values (in label order) -> value."""
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sample.labels.values())] = sample.value
    return out


def job_gauge(exposition: str) -> dict[tuple[str, str], float]:
    found = samples(exposition).get("stillroom_training_jobs", {})
    return {(backend, status): value for (backend, status), value in found.items()}


def zeros(**nonzero: float) -> dict[tuple[str, str], float]:
    """Every (backend, status) at 0, except ``backend__status=value``."""
    counts = {(b, s): 0.0 for b in BACKENDS for s in STATUSES}
    for key, value in nonzero.items():
        backend, status = key.split("__")
        counts[(backend, status)] = value
    return counts


# -- the snapshot and the collector -------------------------------------------------------------


@pytest.mark.anyio
async def test_the_snapshot_is_read_at_start_and_then_every_interval():
    store = CountingStore({("openai", "running"): 2})
    counts = JobCounts(store, interval=0.01, clock=lambda: NOW)  # type: ignore[arg-type]
    await counts.start()
    assert counts.counts == {("openai", "running"): 2} and counts.refreshed_at == NOW
    store.counts = {("openai", "succeeded"): 2}
    async with asyncio.timeout(5):
        while counts.counts != store.counts:
            store.read.clear()
            await store.read.wait()
            await asyncio.sleep(0)  # let refresh() store what it read
    await counts.stop()
    await counts.stop()  # safe twice
    reads = store.reads
    await asyncio.sleep(0.05)
    assert store.reads == reads  # stopped means stopped


@pytest.mark.anyio
async def test_a_store_failure_keeps_the_last_counts_and_warns_once_per_streak(caplog):
    caplog.set_level(logging.INFO, "stillroom.training")
    store = CountingStore({("local", "queued"): 1})
    times = iter([NOW, NOW + 60])
    counts = JobCounts(store, interval=3600, clock=lambda: next(times))  # type: ignore[arg-type]
    await counts.start()
    store.down = True
    for _ in range(3):
        assert await counts.refresh() is False
    assert counts.counts == {("local", "queued"): 1} and counts.refreshed_at == NOW
    assert counts.failures == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "database is locked" in warnings[0].getMessage()
    store.down, store.counts = False, {}
    assert await counts.refresh() is True
    assert counts.counts == {} and counts.refreshed_at == NOW + 60
    assert "counted for /metrics again" in caplog.text
    store.down = True
    await counts.refresh()  # a new streak warns again
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 2
    await counts.stop()


@pytest.mark.anyio
async def test_a_bug_in_a_read_is_logged_and_the_loop_goes_on(caplog):
    store = CountingStore({("openai", "running"): 1})
    counts = JobCounts(store, interval=0.01, clock=lambda: NOW)  # type: ignore[arg-type]
    await counts.start()
    store.bug = True
    async with asyncio.timeout(5):
        while counts.failures < 2:  # two failed reads: the loop outlived the first
            await asyncio.sleep(0.01)
    assert counts.counts == {("openai", "running"): 1}
    assert "counting training jobs for /metrics failed" in caplog.text
    store.bug, store.counts = False, {}
    async with asyncio.timeout(5):
        while counts.counts != {}:
            await asyncio.sleep(0.01)
    await counts.stop()


@pytest.mark.anyio
async def test_a_failed_first_read_starts_anyway_and_shows_no_counts():
    store = CountingStore({})
    store.down = True
    counts = JobCounts(store, interval=3600)  # type: ignore[arg-type]
    await counts.start()
    registry = CollectorRegistry()
    TrainingMetrics(registry).watch(counts)
    found = samples(generate_latest(registry).decode())
    await counts.stop()
    assert "stillroom_training_jobs" not in found  # no counts rather than false zeros
    assert "stillroom_training_jobs_refreshed_timestamp_seconds" not in found
    assert found["stillroom_training_jobs_refresh_failures_total"] == {(): 1.0}


@pytest.mark.anyio
async def test_every_known_backend_and_status_is_exported_and_the_rest_is_other():
    store = CountingStore(
        {("openai", "running"): 2, ("openai", "paused"): 1, ("openai", "pending"): 2,
         ("local", "failed"): 3, ("azure", "queued"): 4}
    )  # fmt: skip
    counts = JobCounts(store, interval=3600, clock=lambda: NOW)  # type: ignore[arg-type]
    await counts.start()
    await counts.stop()
    registry = CollectorRegistry()
    metrics = TrainingMetrics(registry)
    assert samples(generate_latest(registry).decode()) == {}  # nothing watched: no samples
    metrics.watch(counts)
    exposition = generate_latest(registry).decode()
    assert job_gauge(exposition) == zeros(
        openai__running=2, openai__other=3, local__failed=3, other__queued=4
    )
    found = samples(exposition)
    assert found["stillroom_training_jobs_refreshed_timestamp_seconds"] == {(): NOW}
    assert found["stillroom_training_jobs_refresh_failures_total"] == {(): 0.0}


@pytest.mark.anyio
async def test_the_null_store_has_no_jobs():
    assert await NullStore().count_jobs() == {}


# -- a real `stillroom serve` -------------------------------------------------------------------


@pytest.fixture
def db(start_proxy, mock_url, tmp_path):
    return make_training_db(start_proxy, mock_url, tmp_path / "captures.db")


def wait_for(read, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if predicate(value):
            return value
        assert time.monotonic() < deadline, value
        time.sleep(0.02)


def test_the_training_jobs_gauge_follows_the_store(db, start_proxy, mock_url):
    settings = training_settings(mock_url, db, metrics_refresh=0.05)
    with start_proxy(**settings) as base, httpx.Client(base_url=base, headers=AUTH) as http:
        first = http.get("/metrics").text
        assert job_gauge(first) == zeros()  # read at start: every status there, at 0
        refreshed = samples(first)["stillroom_training_jobs_refreshed_timestamp_seconds"][()]
        assert abs(refreshed - time.time()) < 60

        def job(job_id):
            return http.get(f"/admin/jobs/{job_id}").json()

        trained = http.post("/admin/jobs", json={"dataset": "qa", "base_model": "gpt-4o-mini"})
        assert trained.status_code == 201, trained.text
        wait_for(lambda: job(trained.json()["id"]), lambda j: j["status"] == "succeeded")
        refused = http.post("/admin/jobs", json={"dataset": "tiny", "base_model": "nope"})
        wait_for(lambda: job(refused.json()["id"]), lambda j: j["status"] == "failed")
        expected = zeros(openai__succeeded=1, openai__failed=1)
        assert wait_for(lambda: job_gauge(http.get("/metrics").text), expected.__eq__)
        last = samples(http.get("/metrics").text)
        assert last["stillroom_training_jobs_refreshed_timestamp_seconds"][()] > refreshed
        assert last["stillroom_training_jobs_refresh_failures_total"] == {(): 0.0}
