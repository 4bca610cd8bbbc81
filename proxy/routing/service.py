"""``RouteService``: create, change, list and delete routes, with the promotion rule (shared by
``/admin/routes`` and ``stillroom routes``).

Promotion: a route may move up to ``canary`` or ``full`` only with evidence that the student
answers like the teacher:

* offline: ``eval_id`` names a stored eval run (``proxy.evals``) of this route's student
  (same base URL and model) whose verdict passed;
* live: at least ``min_shadow_pairs`` shadow pairs were kept for the route, and each grader
  with a threshold in the route's ``thresholds`` has a mean at or above it over them.

``force: true`` skips both and is recorded in the route's events. Moving down (or to ``off``)
needs nothing. Every change is written with the version the caller read (a concurrent change
is a 409, never a silent overwrite) and leaves an event; the local route table reloads at once,
other replicas within their refresh interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from proxy.routing.routes import MODES, RANK, Route, RouteError, parse_route
from proxy.routing.table import KIND, RouteTable, record_event
from storage.base import Store
from storage.documents import VersionConflict

EVAL_KIND = "eval"
_PAIRS_READ = 5000


class RouteRefused(Exception):
    """A change the service will not make; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, code: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.param = param


class RouteService:
    def __init__(self, store: Store, table: RouteTable | None = None) -> None:
        self.store = store
        self.table = table

    async def create(self, body: object) -> dict[str, Any]:
        route = _parse(body)
        if route.mode in ("canary", "full"):
            raise RouteRefused(
                "a new route starts off or in shadow; promote it once it has evidence",
                code="promotion_required",
                param="mode",
            )
        try:
            doc = await self.store.put_document(KIND, route.name, route.to_json(), if_version=0)
        except VersionConflict:
            raise RouteRefused(
                f"a route named {route.name} exists", code="route_exists", status=409
            ) from None
        await record_event(self.store, route.name, f"created in mode {route.mode}")
        await self._reload()
        return _json(route, doc.version)

    async def get(self, name: str) -> dict[str, Any]:
        route, version = await self._load(name)
        return _json(route, version)

    async def list_routes(self) -> list[dict[str, Any]]:
        docs, _ = await self.store.list_documents(KIND, limit=1000)
        out = []
        for doc in sorted(docs, key=lambda d: d.id):
            try:
                out.append(_json(parse_route(doc.body, name=doc.id), doc.version))
            except RouteError:
                continue
        return out

    async def update(self, name: str, patch: object) -> dict[str, Any]:
        """Apply ``patch`` (route fields, plus ``version``, ``eval_id``, ``force``)."""
        if not isinstance(patch, dict):
            raise RouteRefused("the body must be a JSON object", code="invalid_request")
        patch = dict(patch)
        expected = patch.pop("version", None)
        eval_id = patch.pop("eval_id", None)
        force = patch.pop("force", False)
        if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
            raise RouteRefused("version must be an integer", code="invalid_request")
        if not isinstance(force, bool):
            raise RouteRefused("force must be true or false", code="invalid_request")
        if "name" in patch and patch["name"] != name:
            raise RouteRefused("a route cannot be renamed", code="invalid_request", param="name")
        current, version = await self._load(name)
        if expected is not None and expected != version:
            raise RouteRefused(
                f"route {name} is at version {version}, not {expected}; read it again",
                code="version_conflict",
                status=409,
            )
        merged = current.to_json() | patch
        if "mode" in patch and patch["mode"] != current.mode:
            merged["previous_mode"] = current.mode
        route = _parse(merged, name=name)
        evidence = ""
        if RANK[route.mode] > RANK[current.mode] and route.mode in ("canary", "full"):
            if force:
                evidence = " (forced, without evidence)"
            else:
                evidence = " " + await self._evidence(route, eval_id)
        try:
            doc = await self.store.put_document(KIND, name, route.to_json(), if_version=version)
        except VersionConflict:
            raise RouteRefused(
                f"route {name} changed meanwhile; read it again",
                code="version_conflict",
                status=409,
            ) from None
        changed = sorted(key for key in patch if merged.get(key) != current.to_json().get(key))
        if route.mode != current.mode:
            share = f" at {route.percent:g}%" if route.mode == "canary" else ""
            message = f"mode {current.mode} → {route.mode}{share}{evidence}"
        else:
            message = f"changed {', '.join(changed) or 'nothing'}"
        data = {"eval_id": eval_id, "forced": force, "fields": changed}
        await record_event(self.store, name, message, data)
        await self._reload()
        return _json(route, doc.version)

    async def delete(self, name: str) -> bool:
        deleted = await self.store.delete_document(KIND, name)
        await self._reload()
        return deleted

    async def events(self, name: str, *, kind: str, after: int, limit: int) -> dict[str, Any]:
        await self._load(name)
        found: list[dict[str, Any]] = []
        cursor, more = after, True
        while more and len(found) < limit:
            items, more = await self.store.list_items(KIND, name, after=cursor, limit=500)
            for item in items:
                cursor = item.seq
                if item.body.get("type") == kind:
                    found.append({"id": item.seq, "created_at": item.created_at, **item.body})
                    if len(found) == limit:
                        more = True
                        break
            if not items:
                break
        return {"object": "list", "data": found, "last_id": cursor, "has_more": more}

    async def shadow_summary(self, route: Route) -> dict[str, Any]:
        """Per grader over the route's shadow pairs: mean, 95% CI, how many were scored."""
        from proxy.evals.stats import mean_ci

        scores: dict[str, list[float]] = {}
        pairs = failures = 0
        cursor = 0
        while pairs + failures < _PAIRS_READ:
            items, more = await self.store.list_items(KIND, route.name, after=cursor, limit=500)
            for item in items:
                cursor = item.seq
                if item.body.get("type") != "shadow_pair":
                    continue
                if item.body.get("error"):
                    failures += 1
                    continue
                pairs += 1
                for grader, value in (item.body.get("scores") or {}).items():
                    if isinstance(value, int | float) and math.isfinite(value):
                        scores.setdefault(grader, []).append(float(value))
            if not more:
                break
        summary = {name: asdict(mean_ci(values)) for name, values in sorted(scores.items())}
        return {"pairs": pairs, "student_failures": failures, "graders": summary}

    # -- internals ----------------------------------------------------------------------------

    async def _load(self, name: str) -> tuple[Route, int]:
        doc = await self.store.get_document(KIND, name)
        if doc is None:
            raise RouteRefused(f"no route named {name}", code="not_found", status=404)
        return parse_route(doc.body, name=name), doc.version

    async def _reload(self) -> None:
        if self.table is not None:
            await self.table.reload()

    async def _evidence(self, route: Route, eval_id: object) -> str:
        if not isinstance(eval_id, str) or not eval_id:
            raise RouteRefused(
                f"promoting route {route.name} to {route.mode} needs eval_id: a passing eval of "
                "its student (stillroom eval run), or force: true",
                code="promotion_required",
                param="eval_id",
            )
        doc = await self.store.get_document(EVAL_KIND, eval_id)
        if doc is None:
            raise RouteRefused(f"no eval {eval_id}", code="promotion_required", param="eval_id")
        student = doc.body.get("student") or {}
        if (student.get("base_url"), student.get("model")) != (
            route.student.base_url,
            route.student.model,
        ):
            raise RouteRefused(
                f"eval {eval_id} measured another student ({student.get('model')} at "
                f"{student.get('base_url')})",
                code="promotion_required",
                param="eval_id",
            )
        offline = doc.body.get("verdict") or {}
        if offline.get("passed") is not True:
            why = "; ".join(offline.get("reasons") or []) or "no verdict"
            raise RouteRefused(f"eval {eval_id} did not pass: {why}", code="promotion_required")
        live = await self.shadow_summary(route)
        if live["pairs"] < route.min_shadow_pairs:
            raise RouteRefused(
                f"route {route.name} has {live['pairs']} shadow pairs; promotion needs "
                f"{route.min_shadow_pairs} (run it in shadow mode longer)",
                code="promotion_required",
            )
        from proxy.evals.stats import Summary, verdict

        summaries = {name: Summary(**found) for name, found in live["graders"].items()}
        passed, reasons = verdict(summaries, route.thresholds)
        if not passed:
            raise RouteRefused(
                f"shadow pairs below the route's thresholds: {'; '.join(reasons)}",
                code="promotion_required",
            )
        return f"(eval {eval_id} passed; {live['pairs']} shadow pairs met the thresholds)"


def _parse(body: object, *, name: str | None = None) -> Route:
    try:
        return parse_route(body, name=name)
    except RouteError as exc:
        raise RouteRefused(exc.message, code="invalid_request", param=exc.param) from None


def _json(route: Route, version: int) -> dict[str, Any]:
    return {"object": "route", **route.to_json(), "version": version}


__all__ = ["MODES", "RouteRefused", "RouteService"]
