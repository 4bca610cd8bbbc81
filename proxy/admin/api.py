"""The admin HTTP API under ``/admin`` (docs/admin-api.md): browse, curate and delete captures;
datasets live in ``proxy.admin.datasets``, training jobs in ``proxy.admin.jobs``, routes in
``proxy.admin.routes``, evals in ``proxy.admin.evals``.

``create_admin_app(token, store, runner, router, evals)`` is mounted by ``StillroomApp`` only
when an admin token is set. Every request passes ``AdminAuth`` first; the routes then check
their input against the schemas ``/admin/openapi.json`` publishes (``proxy.admin.params``),
call the ``Store`` and answer JSON. Errors are OpenAI-shaped: 400 bad parameter or body, 404
unknown or malformed capture id and unknown route, 405, 409 a dataset or route conflict or a
running eval, 413 body over ``MAX_BODY_BYTES``, 422 a bulk edit with an empty filter and no
``"all": true``, 429 too many evals running, 503 when the store fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from proxy.admin._http import (
    StoreProvider,
    current_store,
    error_response,
    json_object,
    json_response,
    logger,
    query_params,
    read_json,
    route,
)
from proxy.admin.auth import AdminAuth
from proxy.admin.datasets import dataset_routes
from proxy.admin.evals import EvalTasksProvider, eval_routes
from proxy.admin.jobs import RunnerProvider, job_routes
from proxy.admin.openapi import openapi_document
from proxy.admin.params import (
    is_capture_id,
    parse_body_filter,
    parse_body_patch,
    parse_list_params,
    parse_query_filter,
)
from proxy.admin.routes import RouterProvider, route_routes
from proxy.admin.serialize import capture_json, conversation_json
from proxy.capture_pending import CapturePending, find_capture
from proxy.errors import (
    InvalidRequest,
    MethodNotAllowed,
    ProxyError,
    RouteNotFound,
    UnprocessableRequest,
)
from proxy.settings import Secret
from proxy.types import ASGIApp
from storage.base import Store
from storage.query import CaptureFilter

PendingProvider = Callable[[], CapturePending | None]


def create_admin_app(
    token: Secret,
    store: StoreProvider,
    runner: RunnerProvider | None = None,
    router: RouterProvider | None = None,
    evals: EvalTasksProvider | None = None,
    pending: PendingProvider | None = None,
) -> ASGIApp:
    """The ``/admin`` ASGI app: the bearer check in front of the routes."""
    routes = AdminRoutes(store, pending or (lambda: None))
    site = Starlette(
        routes=[
            route("/admin/openapi.json", "GET", routes.openapi),
            route("/admin/captures", "GET", routes.list_captures),
            route("/admin/captures/update", "POST", routes.update_where),
            route("/admin/captures/delete", "POST", routes.delete_where),
            route("/admin/captures/{id}", "GET", routes.get_capture),
            route("/admin/captures/{id}", "PATCH", routes.patch_capture),
            route("/admin/captures/{id}", "DELETE", routes.delete_capture),
            route("/admin/stats", "GET", routes.stats),
            *dataset_routes(store),
            *job_routes(store, runner or (lambda: None)),
            *route_routes(store, router or (lambda: None)),
            *eval_routes(store, evals or (lambda: None)),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    site.router.redirect_slashes = False  # `/admin/captures/` is not a route: 404, no redirect
    return AdminAuth(site, token)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no route, wrong method), in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 405:
        return error_response(MethodNotAllowed(f"Method not allowed ({where})"), exc.headers)
    return error_response(RouteNotFound(f"Invalid URL ({where})"))


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug: the OpenAI shape with no detail (uvicorn logs the traceback, the client never)."""
    return error_response(ProxyError("the admin API failed; see the server log"))


class AdminRoutes:
    """The handlers; the store is looked up per request (it exists only while the app runs)."""

    def __init__(self, store: StoreProvider, pending: PendingProvider) -> None:
        self._store = store
        # A capture whose id the client has but the store not yet: wait a moment for it
        # (proxy.capture_pending).
        self._pending = pending

    def store(self) -> Store:
        return current_store(self._store)

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    async def list_captures(self, request: Request) -> Response:
        where, after, limit, order = parse_list_params(query_params(request))
        page = await self.store().list_captures(where, after=after, limit=limit, order=order)
        data = [capture_json(item) for item in page.items]
        return json_response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": page.last_id,
                "has_more": page.has_more,
            }
        )

    async def get_capture(self, request: Request) -> Response:
        capture_id = _capture_id(request)
        store = self.store()
        stored = await find_capture(
            self._pending(), capture_id, lambda: store.get_capture(capture_id)
        )
        if stored is None:
            raise _no_capture(capture_id)
        out = capture_json(stored, detail=True)
        if stored.record.endpoint == "responses":
            chain = await store.conversation(capture_id)
            out["conversation"] = conversation_json(chain) if chain is not None else None
        return json_response(out)

    async def patch_capture(self, request: Request) -> Response:
        capture_id = _capture_id(request)
        patch = parse_body_patch(await read_json(request))
        store = self.store()
        stored = await find_capture(
            self._pending(), capture_id, lambda: store.update_capture(capture_id, patch)
        )
        if stored is None:
            raise _no_capture(capture_id)
        return json_response(capture_json(stored))

    async def delete_capture(self, request: Request) -> Response:
        capture_id = _capture_id(request)
        store = self.store()

        async def delete() -> bool | None:
            return await store.delete_capture(capture_id) or None

        if not await find_capture(self._pending(), capture_id, delete):
            raise _no_capture(capture_id)
        return json_response({"object": "capture.deleted", "id": capture_id, "deleted": True})

    async def update_where(self, request: Request) -> Response:
        body = json_object(await read_json(request), {"filter", "patch", "all"})
        if "patch" not in body:
            raise InvalidRequest("patch is required: the edit to apply", param="patch")
        where = _bulk_filter(body)
        patch = parse_body_patch(body["patch"], param="patch")
        updated = await self.store().update_where(where, patch)
        return json_response({"object": "capture.bulk_update", "updated": updated})

    async def delete_where(self, request: Request) -> Response:
        body = json_object(await read_json(request), {"filter", "all"})
        where = _bulk_filter(body)
        deleted = await self.store().delete_where(where)
        logger.info("admin bulk delete: %d captures", deleted)
        return json_response({"object": "capture.bulk_delete", "deleted": deleted})

    async def stats(self, request: Request) -> Response:
        where = parse_query_filter(query_params(request))
        stats = await self.store().stats(None if where.is_empty() else where)
        return json_response({"object": "stats", **stats.to_json()})


def _capture_id(request: Request) -> str:
    """The path's capture id; a malformed one is a capture that cannot exist: 404."""
    capture_id: str = request.path_params["id"]
    if not is_capture_id(capture_id):
        raise RouteNotFound(
            f"no capture {capture_id!r:.80}: capture ids are lowercase UUIDv7", param="id"
        )
    return capture_id


def _no_capture(capture_id: str) -> RouteNotFound:
    return RouteNotFound(f"no capture with id {capture_id}", param="id")


def _bulk_filter(body: dict[str, Any]) -> CaptureFilter:
    """The bulk routes' filter; matching everything must be asked for with ``"all": true``."""
    confirm = body.get("all", False)
    if not isinstance(confirm, bool):
        raise InvalidRequest("all must be true or false", param="all")
    where = parse_body_filter(body.get("filter", {}))
    if where.is_empty() and not confirm:
        raise UnprocessableRequest(
            'the filter is empty, so this would change every capture; send "all": true to '
            "confirm, or give a filter",
            param="filter",
        )
    return where
