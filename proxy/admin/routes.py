"""``/admin/routes``: create, list, show, change and delete routes; their events and shadow pairs
(docs/admin-api.md).

The handlers are a thin layer over ``proxy.routing.service.RouteService`` (the same one
``stillroom routes`` uses on a database file), given the server's ``RouteTable`` so a change
made here applies to this replica's next request at once (other replicas see it within
``STILLROOM_ROUTES_REFRESH``). ``RouteRefused`` becomes OpenAI's error envelope with its
status, ``code`` and ``param``: 400 a bad body or a promotion without evidence
(``promotion_required``), 404 an unknown (or malformed) name, 409 ``route_exists`` or
``version_conflict``. With capture off there is no store for routes: 503, as for jobs.

``check_route_body`` and ``check_route_patch`` refuse, before the service sees them, the few
things ``proxy.routing.routes.parse_route`` would let through or fail on with an exception of
the wrong kind; ``events_page`` and ``shadow_page`` shape the service's items for the wire.
Both are shared with ``stillroom routes`` on a database file, so it accepts and prints exactly
what this API does.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.admin._http import (
    StoreProvider,
    current_store,
    json_response,
    logger,
    no_parameters,
    query_params,
    read_json,
    route,
)
from proxy.admin.params import matches, parse_page_params
from proxy.errors import InvalidRequest, ProxyError, RouteNotFound, StoreNotReady
from proxy.routing.routes import NAME_PATTERN, parse_route
from proxy.routing.service import RouteRefused, RouteService

if TYPE_CHECKING:
    from proxy.routing.router import Router

RouterProvider = Callable[[], "Router | None"]
T = TypeVar("T")

ROUTE_NAME_PATTERN: Final = NAME_PATTERN.pattern
KEY_ENV_PATTERN: Final = "^[A-Z_][A-Z0-9_]*$"
MAX_EVAL_ID: Final = 128
ROUTE_EVENT_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "after": {
        "type": "integer",
        "minimum": 0,
        "maximum": 2**53 - 1,
        "default": 0,
        "description": "the last id already read (items come oldest first)",
    },
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
}


class RouteChangeRefused(ProxyError):
    """A ``RouteRefused`` on the wire: its status (400, 404, 409), code and param."""

    error_type = "invalid_request_error"

    def __init__(self, refused: RouteRefused) -> None:
        param = refused.param if refused.param or refused.status != 404 else "name"
        super().__init__(refused.message, param=param)
        self.status_code = refused.status
        self.code = refused.code


def route_routes(store: StoreProvider, router: RouterProvider) -> list[Route]:
    routes = RouteRoutes(store, router)
    return [
        route("/admin/routes", "GET", routes.list_routes),
        route("/admin/routes", "POST", routes.create_route),
        route("/admin/routes/{name}", "GET", routes.get_route),
        route("/admin/routes/{name}", "PATCH", routes.update_route),
        route("/admin/routes/{name}", "DELETE", routes.delete_route),
        route("/admin/routes/{name}/events", "GET", routes.route_events),
        route("/admin/routes/{name}/shadow", "GET", routes.route_shadow),
    ]


class RouteRoutes:
    def __init__(self, store: StoreProvider, router: RouterProvider) -> None:
        self._store = store
        self._router = router

    def service(self) -> RouteService:
        store = current_store(self._store)
        router = self._router()
        if router is None:
            raise StoreNotReady("routes need the store: capture is off or the server is stopping")
        return RouteService(store, router.table)

    async def list_routes(self, request: Request) -> Response:
        no_parameters(request)
        data = await _refusals(self.service().list_routes())
        return json_response({"object": "list", "data": data})

    async def create_route(self, request: Request) -> Response:
        no_parameters(request)
        body = check_route_body(await read_json(request))
        route = await _refusals(self.service().create(body))
        logger.info("admin: created route %s (mode %s)", route["name"], route["mode"])
        return json_response(route, status=201)

    async def get_route(self, request: Request) -> Response:
        no_parameters(request)
        name = _route_name(request)
        return json_response(await _refusals(self.service().get(name)))

    async def update_route(self, request: Request) -> Response:
        no_parameters(request)
        name = _route_name(request)
        patch = check_route_patch(await read_json(request))
        route = await _refusals(self.service().update(name, patch))
        logger.info("admin: changed route %s (mode %s)", name, route["mode"])
        return json_response(route)

    async def delete_route(self, request: Request) -> Response:
        no_parameters(request)
        name = _route_name(request)
        if not await self.service().delete(name):
            raise _no_route(name)
        logger.info("admin: deleted route %s", name)
        return json_response({"object": "route.deleted", "name": name, "deleted": True})

    async def route_events(self, request: Request) -> Response:
        page = parse_page_params(query_params(request), ROUTE_EVENT_SCHEMAS)
        name = _route_name(request)
        after, limit = int(page["after"]), int(page["limit"])
        return json_response(await _refusals(events_page(self.service(), name, after, limit)))

    async def route_shadow(self, request: Request) -> Response:
        page = parse_page_params(query_params(request), ROUTE_EVENT_SCHEMAS)
        name = _route_name(request)
        after, limit = int(page["after"]), int(page["limit"])
        return json_response(await _refusals(shadow_page(self.service(), name, after, limit)))


# -- shared with `stillroom routes` on a database file ---------------------------------------------


def is_route_name(value: str) -> bool:
    return matches(ROUTE_NAME_PATTERN, value)


def check_route_body(body: object) -> dict[str, Any]:
    """A create body, once the checks ``parse_route`` leaves out pass (400 otherwise)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object (a route)")
    name = body.get("name")
    if isinstance(name, str) and not is_route_name(name):
        raise InvalidRequest("name must be 1-64 letters, digits, '.', '_' or '-'", param="name")
    _check_fields(body)
    return body


def check_route_patch(body: object) -> dict[str, Any]:
    """A PATCH body: route fields, plus ``version``, ``eval_id`` and ``force`` (400 otherwise)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object (the fields to change)")
    version = body.get("version")
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 1
    ):
        raise InvalidRequest("version must be a positive integer (the one read)", param="version")
    eval_id = body.get("eval_id")
    if eval_id is not None and (
        not isinstance(eval_id, str) or not 0 < len(eval_id) <= MAX_EVAL_ID
    ):
        raise InvalidRequest(
            f"eval_id must name an eval run (1-{MAX_EVAL_ID} characters)", param="eval_id"
        )
    if not isinstance(body.get("force", False), bool):
        raise InvalidRequest("force must be true or false", param="force")
    _check_fields(body)
    return body


def _check_fields(body: dict[str, Any]) -> None:
    student = body.get("student")
    if isinstance(student, dict):
        url = student.get("base_url")
        if isinstance(url, str):
            try:
                urllib.parse.urlsplit(url).hostname  # noqa: B018 (it raises on a bad host)
            except ValueError:
                raise InvalidRequest(
                    "student.base_url must be an http(s) URL with /v1 and no credentials",
                    param="student",
                ) from None
        env = student.get("api_key_env")
        if isinstance(env, str) and not matches(KEY_ENV_PATTERN, env):
            raise InvalidRequest(
                "student.api_key_env must name an environment variable (the key is never stored)",
                param="student",
            )
    graders = body.get("graders")
    if isinstance(graders, list):
        for grader in graders:
            if isinstance(grader, dict) and not isinstance(grader.get("type", ""), str):
                raise InvalidRequest("graders: a grader's type must be a string", param="graders")
    thresholds = body.get("thresholds", {})
    if not isinstance(thresholds, dict) or not all(
        isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
        for value in thresholds.values()
    ):
        raise InvalidRequest(
            "thresholds must map grader names to a minimum mean from 0 to 1", param="thresholds"
        )


async def events_page(service: RouteService, name: str, after: int, limit: int) -> dict[str, Any]:
    """A route's events, oldest first: ``{"object": "list", "data", "last_id", "has_more"}``."""
    page = await service.events(name, kind="event", after=after, limit=limit)
    data = [
        {
            "object": "route.event",
            "id": item["id"],
            "route": name,
            "created_at": item["created_at"],
            "message": str(item.get("message", "")),
            "data": item.get("data") if isinstance(item.get("data"), dict) else {},
        }
        for item in page["data"]
    ]
    return {
        "object": "list",
        "data": data,
        "last_id": page["last_id"],
        "has_more": page["has_more"],
    }


async def shadow_page(service: RouteService, name: str, after: int, limit: int) -> dict[str, Any]:
    """A route's shadow pairs, oldest first, with ``summary``: per grader, the mean and its
    95% interval over the route's pairs (``RouteService.shadow_summary``)."""
    route = await service.get(name)
    page = await service.events(name, kind="shadow_pair", after=after, limit=limit)
    body = {key: value for key, value in route.items() if key not in ("object", "version")}
    summary = await service.shadow_summary(parse_route(body, name=name))
    data = [
        {
            "object": "route.shadow_pair",
            "id": item["id"],
            "route": name,
            "created_at": item["created_at"],
            "capture_id": item.get("capture_id"),
            "student_capture_id": item.get("student_capture_id"),
            "scores": item.get("scores") or {},
            "error": item.get("error"),
            "student": item.get("student"),
            "teacher": item.get("teacher"),
            "student_latency_ms": item.get("student_latency_ms"),
            "teacher_latency_ms": item.get("teacher_latency_ms"),
        }
        for item in page["data"]
    ]
    return {
        "object": "list",
        "data": data,
        "last_id": page["last_id"],
        "has_more": page["has_more"],
        "summary": summary,
    }


# -- internals ----------------------------------------------------------------------------------


async def _refusals(work: Awaitable[T]) -> T:
    """Await ``work``; a ``RouteRefused`` becomes its OpenAI-shaped answer."""
    try:
        return await work
    except RouteRefused as exc:
        raise RouteChangeRefused(exc) from None


def _route_name(request: Request) -> str:
    """The path's route name; a malformed one is a route that cannot exist: 404."""
    name: str = request.path_params["name"]
    if not is_route_name(name):
        raise RouteNotFound(
            f"no route {name!r:.80}: route names are 1-64 letters, digits, '.', '_' or '-'",
            param="name",
        )
    return name


def _no_route(name: str) -> RouteNotFound:
    return RouteNotFound(f"no route named {name}", param="name")
