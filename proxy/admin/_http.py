"""What every admin route shares: JSON answers, OpenAI-shaped errors, bodies and query strings.

``answers_errors`` wraps a handler so our exceptions and the store's become OpenAI-shaped
answers (never a 500 traceback); ``read_json`` reads a body of at most ``MAX_BODY_BYTES``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.errors import InvalidRequest, ProxyError, RequestTooLarge, StoreNotReady
from storage.base import Store
from storage.errors import StoreError
from storage.query import QueryError

logger = logging.getLogger("stillroom.admin")

MAX_BODY_BYTES = 1024 * 1024  # PATCH and bulk bodies; a corrected answer fits many times over

Handler = Callable[[Request], Awaitable[Response]]
StoreProvider = Callable[[], Store | None]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_response(error: ProxyError, headers: Mapping[str, str] | None = None) -> Response:
    if error.retry_after_s is not None:
        headers = {**(headers or {}), "retry-after": str(error.retry_after_s)}
    return Response(
        error.to_json(), error.status_code, headers=headers, media_type="application/json"
    )


def answers_errors(handler: Handler) -> Handler:
    """Our exceptions and the store's become OpenAI-shaped answers, never a 500 traceback."""

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except QueryError as exc:
            return error_response(InvalidRequest(exc.message, param=exc.param))
        except ProxyError as exc:
            return error_response(exc)
        except StoreError as exc:
            logger.warning("admin %s %s: store error: %s", request.method, request.url.path, exc)
            return error_response(StoreNotReady("the capture store failed; try again later"))

    return answer


def route(path: str, method: str, handler: Handler) -> Route:
    """One admin API route; ``handler``'s errors are answered as OpenAI-shaped JSON."""
    return Route(path, answers_errors(handler), methods=[method])


def query_params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        params.setdefault(name, []).append(value)
    return params


def no_parameters(request: Request) -> None:
    """Refuse a query string on a route that takes none (400, naming the first parameter)."""
    for name in request.query_params:
        raise InvalidRequest(f"unknown parameter {name!r:.80}; this route takes none", param=name)


def json_object(body: object, known: set[str] | tuple[str, ...]) -> dict[str, Any]:
    """``body`` if it is a JSON object with no field outside ``known`` (400 otherwise)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    for name in body:
        if name not in known:
            raise InvalidRequest(
                f"unknown field {name!r:.80}; known: {', '.join(sorted(known))}", param=name
            )
    return body


async def read_json(request: Request) -> object:
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


def current_store(provider: StoreProvider) -> Store:
    """The open store (it exists only while the app runs): 503 when there is none."""
    store = provider()
    if store is None:
        raise StoreNotReady("the capture store is not open (starting or stopping)")
    return store
