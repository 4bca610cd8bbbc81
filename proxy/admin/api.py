"""The admin HTTP API under ``/admin`` (docs/admin-api.md): browse, curate and delete captures.

``create_admin_app(token, store)`` is mounted by ``StillroomApp`` only when an admin token is
set. Every request passes ``AdminAuth`` first; the routes then check their input against the
schemas ``/admin/openapi.json`` publishes (``proxy.admin.params``), call the ``Store`` and answer
JSON. Errors are OpenAI-shaped: 400 bad parameter or body, 404 unknown or malformed capture id
and unknown route, 405, 413 body over ``MAX_BODY_BYTES``, 422 a bulk edit with an empty filter
and no ``"all": true``, 503 when the store fails.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.admin.auth import AdminAuth
from proxy.admin.openapi import openapi_document
from proxy.admin.params import (
    is_capture_id,
    parse_body_filter,
    parse_body_patch,
    parse_list_params,
    parse_query_filter,
)
from proxy.admin.serialize import capture_json, conversation_json
from proxy.errors import (
    InvalidRequest,
    MethodNotAllowed,
    ProxyError,
    RequestTooLarge,
    RouteNotFound,
    StoreNotReady,
    UnprocessableRequest,
)
from proxy.settings import Secret
from proxy.types import ASGIApp
from storage.base import Store
from storage.errors import StoreError
from storage.query import CaptureFilter, QueryError

logger = logging.getLogger("stillroom.admin")

MAX_BODY_BYTES = 1024 * 1024  # PATCH and bulk bodies; a corrected answer fits many times over

StoreProvider = Callable[[], Store | None]
Handler = Callable[[Request], Awaitable[Response]]


def create_admin_app(token: Secret, store: StoreProvider) -> ASGIApp:
    """The ``/admin`` ASGI app: the bearer check in front of the routes."""
    routes = AdminRoutes(store)
    site = Starlette(
        routes=[
            Route("/admin/openapi.json", routes.openapi, methods=["GET"]),
            Route("/admin/captures", routes.list_captures, methods=["GET"]),
            Route("/admin/captures/update", routes.update_where, methods=["POST"]),
            Route("/admin/captures/delete", routes.delete_where, methods=["POST"]),
            Route("/admin/captures/{id}", routes.get_capture, methods=["GET"]),
            Route("/admin/captures/{id}", routes.patch_capture, methods=["PATCH"]),
            Route("/admin/captures/{id}", routes.delete_capture, methods=["DELETE"]),
            Route("/admin/stats", routes.stats, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    site.router.redirect_slashes = False  # `/admin/captures/` is not a route: 404, no redirect
    return AdminAuth(site, token)


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(error: ProxyError, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        error.to_json(), error.status_code, headers=headers, media_type="application/json"
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no route, wrong method), in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 405:
        return _error(MethodNotAllowed(f"Method not allowed ({where})"), exc.headers)
    return _error(RouteNotFound(f"Invalid URL ({where})"))


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug: the OpenAI shape with no detail (uvicorn logs the traceback, the client never)."""
    return _error(ProxyError("the admin API failed; see the server log"))


def _answers_errors(handler: Handler) -> Handler:
    """Our exceptions and the store's become OpenAI-shaped answers, never a 500 traceback."""

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except QueryError as exc:
            return _error(InvalidRequest(exc.message, param=exc.param))
        except ProxyError as exc:
            return _error(exc)
        except StoreError as exc:
            logger.warning("admin %s %s: store error: %s", request.method, request.url.path, exc)
            return _error(StoreNotReady("the capture store failed; try again later"))

    return answer


class AdminRoutes:
    """The handlers; the store is looked up per request (it exists only while the app runs)."""

    def __init__(self, store: StoreProvider) -> None:
        self._store = store
        self.openapi = _answers_errors(self._openapi)
        self.list_captures = _answers_errors(self._list_captures)
        self.get_capture = _answers_errors(self._get_capture)
        self.patch_capture = _answers_errors(self._patch_capture)
        self.delete_capture = _answers_errors(self._delete_capture)
        self.update_where = _answers_errors(self._update_where)
        self.delete_where = _answers_errors(self._delete_where)
        self.stats = _answers_errors(self._stats)

    def store(self) -> Store:
        store = self._store()
        if store is None:
            raise StoreNotReady("the capture store is not open (starting or stopping)")
        return store

    async def _openapi(self, request: Request) -> Response:
        return _json(openapi_document())

    async def _list_captures(self, request: Request) -> Response:
        where, after, limit, order = parse_list_params(_params(request))
        page = await self.store().list_captures(where, after=after, limit=limit, order=order)
        data = [capture_json(item) for item in page.items]
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": page.last_id,
                "has_more": page.has_more,
            }
        )

    async def _get_capture(self, request: Request) -> Response:
        capture_id = _capture_id(request)
        store = self.store()
        stored = await store.get_capture(capture_id)
        if stored is None:
            raise _no_capture(capture_id)
        out = capture_json(stored, detail=True)
        if stored.record.endpoint == "responses":
            chain = await store.conversation(capture_id)
            out["conversation"] = conversation_json(chain) if chain is not None else None
        return _json(out)

    async def _patch_capture(self, request: Request) -> Response:
        capture_id = _capture_id(request)
        patch = parse_body_patch(await _read_json(request))
        stored = await self.store().update_capture(capture_id, patch)
        if stored is None:
            raise _no_capture(capture_id)
        return _json(capture_json(stored))

    async def _delete_capture(self, request: Request) -> Response:
        capture_id = _capture_id(request)
        if not await self.store().delete_capture(capture_id):
            raise _no_capture(capture_id)
        return _json({"object": "capture.deleted", "id": capture_id, "deleted": True})

    async def _update_where(self, request: Request) -> Response:
        body = _object(await _read_json(request), {"filter", "patch", "all"})
        if "patch" not in body:
            raise InvalidRequest("patch is required: the edit to apply", param="patch")
        where = _bulk_filter(body)
        patch = parse_body_patch(body["patch"], param="patch")
        updated = await self.store().update_where(where, patch)
        return _json({"object": "capture.bulk_update", "updated": updated})

    async def _delete_where(self, request: Request) -> Response:
        body = _object(await _read_json(request), {"filter", "all"})
        where = _bulk_filter(body)
        deleted = await self.store().delete_where(where)
        logger.info("admin bulk delete: %d captures", deleted)
        return _json({"object": "capture.bulk_delete", "deleted": deleted})

    async def _stats(self, request: Request) -> Response:
        where = parse_query_filter(_params(request))
        stats = await self.store().stats(None if where.is_empty() else where)
        return _json({"object": "stats", **stats.to_json()})


def _params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        params.setdefault(name, []).append(value)
    return params


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


def _object(body: object, known: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    for name in body:
        if name not in known:
            raise InvalidRequest(
                f"unknown field {name!r:.80}; known: {', '.join(sorted(known))}", param=name
            )
    return body


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


async def _read_json(request: Request) -> object:
    """The request body as JSON, at most ``MAX_BODY_BYTES`` (413 past it, 400 if not JSON)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestTooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestTooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body must be valid JSON (an object)") from None
