"""Prometheus metrics of the routes, read from the router at scrape time.

* ``stillroom_route_requests_total{route, outcome}``: requests a route sent to its student,
  by outcome: ``student`` (it answered) or ``fallback`` (the teacher stepped in);
* ``stillroom_route_mode{route, mode}``: 1 for each route's current mode;
* ``stillroom_route_rollbacks_total{route}``: automatic rollbacks this replica wrote (one
  rollback is written by one replica, so a sum over replicas counts each once);
* ``stillroom_shadow_requests_total{outcome}``: shadow requests ``sent``, ``dropped`` (the
  queue was full) and ``failed`` (a bug, logged);
* ``stillroom_shadow_in_flight{route}`` and ``stillroom_shadow_in_flight_peak{route}``: student
  requests in flight for shadow traffic now, and the most at once since start (never above the
  route's ``max_concurrency``).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from proxy.routing.router import Router


class RoutingMetrics:
    def __init__(self, registry: CollectorRegistry, router: Router) -> None:
        self.router = router
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        router = self.router
        requests = CounterMetricFamily(
            "stillroom_route_requests",
            "Requests a route sent to its student, by outcome (student, fallback).",
            labels=["route", "outcome"],
        )
        for (name, outcome), count in sorted(router.counts.items()):
            requests.add_metric([name, outcome], count)
        modes = GaugeMetricFamily(
            "stillroom_route_mode", "1 for each route's current mode.", labels=["route", "mode"]
        )
        for name, current in sorted(router.table.routes.items()):
            modes.add_metric([name, current.mode], 1)
        rollbacks = CounterMetricFamily(
            "stillroom_route_rollbacks",
            "Automatic rollbacks of a route (too many fallbacks) this replica wrote.",
            labels=["route"],
        )
        for name, count in sorted(router.table.rollbacks.items()):
            rollbacks.add_metric([name], count)
        yield requests
        yield modes
        yield rollbacks
        shadow = router.shadow_sender
        if shadow is None:
            return
        sent = CounterMetricFamily(
            "stillroom_shadow_requests", "Shadow requests by outcome.", labels=["outcome"]
        )
        sent.add_metric(["sent"], shadow.sent)
        sent.add_metric(["dropped"], shadow.dropped)
        sent.add_metric(["failed"], shadow.failed)
        now = GaugeMetricFamily(
            "stillroom_shadow_in_flight", "Shadow student requests in flight.", labels=["route"]
        )
        peak = GaugeMetricFamily(
            "stillroom_shadow_in_flight_peak",
            "The most shadow student requests in flight at once since start.",
            labels=["route"],
        )
        for name in sorted(shadow.peak_in_flight):
            now.add_metric([name], shadow.in_flight.get(name, 0))
            peak.add_metric([name], shadow.peak_in_flight[name])
        yield sent
        yield now
        yield peak
