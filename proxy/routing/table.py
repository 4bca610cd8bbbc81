"""``RouteTable``: the routes this replica applies, kept in step with the store, and rollback.

The table holds the routes in memory so matching a request costs no database call. A refresh
task reads the store's change marker for routes every ``refresh`` seconds and reloads when it
moved: a change made through any replica's admin API applies everywhere within that interval.
Admin changes made through this replica apply at once (``reload``).

Rollback: each student-served request reports whether the student answered or the teacher had
to step in (``record``). Per route, a sliding window of ``rollback.window_s`` seconds counts
both; when at least ``rollback.min_requests`` are in it and the fallback share exceeds
``rollback.max_fallback_rate``, the route goes back to its ``previous_mode`` (or ``shadow``),
written to the store with the route's version, so a concurrent change wins and two replicas
rolling back at once record it once. A route event says why.

Matching: a route matches a request whose ``model`` is the route's ``model`` and whose tags
include all of the route's ``tags``; of several, the one with the most tags wins, then the
first by name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.routing.routes import Route, RouteError, parse_route
from proxy.tasks import cancel_and_wait, spawn
from storage.base import Store
from storage.documents import VersionConflict
from storage.errors import StoreError

logger = logging.getLogger("stillroom.routing")

KIND: Final = "route"


@dataclass(slots=True)
class _Window:
    events: deque[tuple[float, bool]] = field(default_factory=deque)  # (time, fell back)
    fallbacks: int = 0

    def add(self, now: float, fell_back: bool, span: float) -> tuple[int, int]:
        self.events.append((now, fell_back))
        self.fallbacks += fell_back
        while self.events and self.events[0][0] < now - span:
            _, old = self.events.popleft()
            self.fallbacks -= old
        return len(self.events), self.fallbacks


async def record_event(
    store: Store, route: str, message: str, data: Mapping[str, Any] | None = None
) -> None:
    body = {"type": "event", "message": message, "data": dict(data or {}), "at": time.time()}
    await store.add_items(KIND, route, [body])


class RouteTable:
    def __init__(self, store: Store, *, refresh: float = 0.5) -> None:
        self.store = store
        self.refresh = refresh
        self.routes: dict[str, Route] = {}
        self.versions: dict[str, int] = {}
        self._marker: tuple[float, int] | None = None
        self._windows: dict[str, _Window] = {}
        self._rolling_back: set[str] = set()
        self.rollbacks: dict[str, int] = {}  # route -> rollbacks this replica wrote
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.reload()
        self._task = spawn(self._refresh_forever(), name="route-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def reload(self) -> None:
        """Read every route from the store now."""
        marker = await self.store.documents_changed(KIND)
        routes: dict[str, Route] = {}
        versions: dict[str, int] = {}
        after: str | None = None
        while True:
            page, more = await self.store.list_documents(KIND, after=after, limit=500)
            for doc in page:
                try:
                    routes[doc.id] = parse_route(doc.body, name=doc.id)
                    versions[doc.id] = doc.version
                except RouteError as exc:  # a route no replica can apply: skip it loudly
                    logger.error("route %s in the store is invalid, skipped: %s", doc.id, exc)
            if not more or not page:
                break
            after = page[-1].id
        self.routes, self.versions, self._marker = routes, versions, marker
        for name in list(self._windows):
            if name not in routes:
                del self._windows[name]

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            try:
                if await self.store.documents_changed(KIND) != self._marker:
                    await self.reload()
            except StoreError as exc:  # keep the routes we have; the store comes back
                logger.warning("could not refresh routes: %s", exc)

    def match(self, model: object, tags: Mapping[str, str]) -> Route | None:
        if not self.routes or not isinstance(model, str):
            return None
        best: Route | None = None
        for route in self.routes.values():
            if route.model != model or route.mode == "off":
                continue
            if any(tags.get(key) != value for key, value in route.tags.items()):
                continue
            if best is None or (len(route.tags), best.name) > (len(best.tags), route.name):
                best = route
        return best

    # -- rollback -----------------------------------------------------------------------------

    def record(self, route: Route, fell_back: bool) -> None:
        """One student-served request's result; may start a rollback."""
        window = self._windows.setdefault(route.name, _Window())
        total, fallbacks = window.add(time.monotonic(), fell_back, route.rollback.window_s)
        rule = route.rollback
        if (
            total >= rule.min_requests
            and fallbacks / total > rule.max_fallback_rate
            and route.name not in self._rolling_back
            and route.mode in ("canary", "full")
        ):
            self._rolling_back.add(route.name)
            spawn(self._roll_back(route, total, fallbacks), name=f"rollback-{route.name}")

    async def _roll_back(self, route: Route, total: int, fallbacks: int) -> None:
        try:
            target = route.previous_mode
            if target is None or target in ("canary", "full") or target == route.mode:
                target = "shadow"
            rolled = route.with_mode(target)
            version = self.versions.get(route.name)
            try:
                await self.store.put_document(
                    KIND, route.name, rolled.to_json(), if_version=version
                )
            except VersionConflict:
                return  # someone changed the route meanwhile (maybe rolled it back): theirs wins
            self.rollbacks[route.name] = self.rollbacks.get(route.name, 0) + 1
            message = (
                f"rolled back {route.mode} → {target}: {fallbacks} of the last {total} "
                f"student requests fell back to the teacher "
                f"(limit {route.rollback.max_fallback_rate:.0%})"
            )
            logger.warning("route %s %s", route.name, message)
            await record_event(
                self.store,
                route.name,
                message,
                {"from": route.mode, "to": target, "requests": total, "fallbacks": fallbacks},
            )
            self._windows.pop(route.name, None)
            await self.reload()
        except StoreError as exc:
            logger.error("route %s: could not roll back: %s", route.name, exc)
        finally:
            self._rolling_back.discard(route.name)
