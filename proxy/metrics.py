"""Every Prometheus metric the proxy exports, on a registry made per app (never the global one).

Labels are low-cardinality only: route template, method, status class, error kind, a training
job's backend and status (unknown ones as ``other``). Labelled children are cached so the hot
path pays a dict lookup, not prometheus_client's label parsing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.errors import ProxyError
from storage.jobs import BACKENDS, JOB_STATUSES

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip
_ADDED_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


_KNOWN_ROUTES = frozenset(
    {"chat/completions", "responses", "completions", "embeddings", "models", "files", "batches"}
)
_KNOWN_ROOTS = frozenset(
    {
        "chat",
        "responses",
        "models",
        "files",
        "uploads",
        "fine_tuning",
        "batches",
        "evals",
        "audio",
        "images",
        "moderations",
        "vector_stores",
        "assistants",
        "threads",
        "realtime",
    }
)


def route_template(path: str) -> str:
    """A low-cardinality label for a /v1 path (ids never reach the metrics)."""
    rest = path[4:]  # after "/v1/"
    if rest in _KNOWN_ROUTES:
        return path
    root = rest.split("/", 1)[0]
    return f"/v1/{root}/*" if root in _KNOWN_ROOTS else "/v1/*"


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def _status_class(status: int) -> str:
    if status == 499:
        return "client_closed"
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "stillroom_requests",
            "Requests handled, by route template, method and status class.",
            ["route", "method", "status_class"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "stillroom_requests_in_flight",
            "Requests being relayed right now.",
            registry=registry,
        )
        self.upstream_latency = Histogram(
            "stillroom_upstream_latency_seconds",
            "Time from sending the request upstream to the end of the relayed response.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_ttfb = Histogram(
            "stillroom_upstream_ttfb_seconds",
            "Time from sending the request upstream to the first byte of the response body.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.added = Histogram(
            "stillroom_proxy_added_seconds",
            "Time the proxy itself adds to a relayed request: from its body being read to the "
            "request going upstream, plus from the upstream's last byte to the client's.",
            ["route"],
            buckets=_ADDED_BUCKETS,
            registry=registry,
        )
        self.proxy_errors = Counter(
            "stillroom_proxy_errors",
            "Errors the proxy answered itself (upstream unreachable, timeout, too large, ...).",
            ["code"],
            registry=registry,
        )
        self.client_disconnects = Counter(
            "stillroom_client_disconnects",
            "Clients that went away before their response was complete.",
            registry=registry,
        )
        self._request_children: dict[tuple[str, str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._ttfb_children: dict[str, Histogram] = {}
        self._added_children: dict[str, Histogram] = {}

    def count_request(self, route: str, method: str, status: int) -> None:
        key = (route, method if method in _METHODS else "OTHER", _status_class(status))
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()

    def observe_latency(self, route: str, seconds: float) -> None:
        child = self._latency_children.get(route)
        if child is None:
            child = self._latency_children[route] = self.upstream_latency.labels(route)
        child.observe(seconds)

    def observe_ttfb(self, route: str, seconds: float) -> None:
        child = self._ttfb_children.get(route)
        if child is None:
            child = self._ttfb_children[route] = self.upstream_ttfb.labels(route)
        child.observe(seconds)

    def observe_added(self, route: str, seconds: float) -> None:
        child = self._added_children.get(route)
        if child is None:
            child = self._added_children[route] = self.added.labels(route)
        child.observe(seconds)

    def count_proxy_error(self, exc: ProxyError) -> None:
        self.proxy_errors.labels(exc.code or "proxy_error").inc()


class CaptureMetrics:
    """Capture counters read from the writer at scrape time (the writer imports no Prometheus)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_seconds = Histogram(
            "stillroom_capture_batch_write_seconds",
            "Time to write one batch of captures to the store.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self._registry = registry
        self._sources: list[CaptureSource] = []
        registry.register(self)

    def watch(self, source: CaptureSource) -> None:
        self._sources[:] = [source]

    def observe_batch(self, seconds: float, records: int) -> None:
        self.batch_seconds.observe(seconds)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        written = CounterMetricFamily(
            "stillroom_captures_written", "Captures written to the store."
        )
        dropped = CounterMetricFamily(
            "stillroom_captures_dropped",
            "Captures not stored, by reason (queue_full, storage_full, storage_error, ...).",
            labels=["reason"],
        )
        depth = GaugeMetricFamily(
            "stillroom_capture_queue_depth", "Captures waiting to be written."
        )
        size = GaugeMetricFamily(
            "stillroom_capture_queue_bytes", "Approximate bytes held by waiting captures."
        )
        indexed = CounterMetricFamily(
            "stillroom_captures_indexed",
            "Captures turned into searchable records (deferred indexing: the indexer's count).",
        )
        backlog = GaugeMetricFamily(
            "stillroom_capture_index_backlog_bytes",
            "Bytes of captures spooled and not yet indexed (deferred indexing).",
        )
        lag = GaugeMetricFamily(
            "stillroom_capture_index_lag_seconds",
            "Age of the oldest capture not yet indexed (deferred indexing).",
        )
        skipped = CounterMetricFamily(
            "stillroom_capture_spool_skipped_bytes",
            "Spool bytes the indexer could not read (a torn or corrupt end after a crash or a "
            "full disk) and skipped: captures lost there are not in the drop counts.",
        )
        retries = CounterMetricFamily(
            "stillroom_capture_index_retries",
            "Times the indexer could not store captures (database locked, full or unavailable) "
            "and waited to retry; the captures stay in the spool meanwhile.",
        )
        restarts = CounterMetricFamily(
            "stillroom_capture_indexer_restarts",
            "Times the indexer process was found dead and a restart was tried.",
        )
        for source in self._sources:
            written.add_metric([], source.written_total)
            for reason, count in source.dropped_total().items():
                dropped.add_metric([reason], count)
            depth.add_metric([], source.queue_depth)
            size.add_metric([], source.queue_bytes)
            indexed.add_metric([], source.indexed_total)
            backlog.add_metric([], source.index_backlog_bytes)
            lag.add_metric([], source.index_lag_s)
            skipped.add_metric([], source.spool_skipped_bytes)
            retries.add_metric([], source.index_retries_total)
            restarts.add_metric([], source.indexer_restarts_total)
        return [written, dropped, depth, size, indexed, backlog, lag, skipped, retries, restarts]


class CaptureSource(Protocol):
    @property
    def written_total(self) -> int: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def queue_bytes(self) -> int: ...

    @property
    def indexed_total(self) -> int: ...

    @property
    def index_backlog_bytes(self) -> int: ...

    @property
    def index_lag_s(self) -> float: ...

    @property
    def spool_skipped_bytes(self) -> int: ...

    @property
    def index_retries_total(self) -> int: ...

    @property
    def indexer_restarts_total(self) -> int: ...

    def dropped_total(self) -> dict[str, int]: ...


class TrainingMetrics:
    """Training jobs by backend and status, from a snapshot refreshed in the background (the
    store is async; a scrape never waits on it). Every known backend and status is present,
    0 when there are none; a status or backend outside the known ones counts as ``other``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._sources: list[JobCountsSource] = []
        registry.register(self)

    def watch(self, source: JobCountsSource) -> None:
        self._sources[:] = [source]

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily(
            "stillroom_training_jobs",
            "Training jobs in the store, by backend and status (the same on every replica "
            "sharing a store).",
            labels=["backend", "status"],
        )
        refreshed = GaugeMetricFamily(
            "stillroom_training_jobs_refreshed_timestamp_seconds",
            "Unix time of the store read the training job counts come from.",
        )
        failures = CounterMetricFamily(
            "stillroom_training_jobs_refresh_failures",
            "Reads of the training job counts that failed (the last counts stay).",
        )
        for source in self._sources:
            failures.add_metric([], source.failures)
            if source.counts is None or source.refreshed_at is None:
                continue
            for (backend, status), count in _job_counts(source.counts).items():
                jobs.add_metric([backend, status], count)
            refreshed.add_metric([], source.refreshed_at)
        return [jobs, refreshed, failures]


def _job_counts(counts: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    statuses = (*JOB_STATUSES, "other")
    out: dict[tuple[str, str], int] = {(b, s): 0 for b in BACKENDS for s in statuses}
    for (backend, status), count in counts.items():
        key = (
            backend if backend in BACKENDS else "other",
            status if status in JOB_STATUSES else "other",
        )
        out[key] = out.get(key, 0) + count
    return out


class JobCountsSource(Protocol):
    @property
    def counts(self) -> Mapping[tuple[str, str], int] | None: ...

    @property
    def refreshed_at(self) -> float | None: ...

    @property
    def failures(self) -> int: ...
