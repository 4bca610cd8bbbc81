"""OpenAI's Stored Completions API, answered from the local store (``stored_completions=local``).

Served routes (every other ``/v1`` call, including the create ``POST /v1/chat/completions``,
goes to the forwarder untouched; ``match_route`` is the cheap test the app runs first)::

    GET    /v1/chat/completions                  list: model, metadata[k]=v, after, limit, order
    GET    /v1/chat/completions/{id}             one chat.completion
    POST   /v1/chat/completions/{id}             {"metadata": {...}}: replace the tags
    DELETE /v1/chat/completions/{id}             hard delete
    GET    /v1/chat/completions/{id}/messages    the request's input messages, paginated

``{id}`` is the completion's own ``chatcmpl-…`` id or the capture id. Only completed chat
completions with a response object are visible. The caller's key decides which: the admin token
(compared in constant time) sees every capture; any other key, from ``Authorization: Bearer`` or
``api-key``, only captures whose key fingerprint is that key's, and another key's completion
answers 404 exactly like a missing one; no key is a 401.

Choices where OpenAI's behaviour is not documented: an ``after`` that names no visible completion
(or a capture deleted since) is a 400 (``param: "after"``) rather than an empty page, so a
paginating client never mistakes a bad cursor for the end. ``metadata`` on update replaces the
whole map. Pages are in the order captures were stored (``storage.query``).
Errors use OpenAI's envelope; a store failure is a 503, never a traceback.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from proxy.admin._completion_params import (
    PageQuery,
    Params,
    parse_list_query,
    parse_page_query,
    parse_update_body,
    query_params,
    refuse_params,
)
from proxy.admin._completion_shapes import (
    completion_id,
    completion_object,
    input_messages,
    is_stored_completion,
)
from proxy.capture import credential as read_credential
from proxy.capture import key_fingerprint
from proxy.capture_pending import CapturePending, find_capture
from proxy.errors import InvalidRequest, ProxyError, RequestTooLarge, RouteNotFound
from proxy.types import Receive, Scope, Send
from storage.base import Store
from storage.errors import StoreError
from storage.query import CaptureFilter, CapturePatch, QueryError, StoredCapture, is_capture_id

logger = logging.getLogger("stillroom.stored_completions")

LIST_PATH = "/v1/chat/completions"
_ITEM_PREFIX = LIST_PATH + "/"
MAX_BODY_BYTES = 64 * 1024  # an update body: at most 16 metadata pairs
MAX_ID_LENGTH = 256

Action = Literal["list", "retrieve", "update", "delete", "messages"]
_ITEM_ACTIONS: dict[str, Action] = {"GET": "retrieve", "POST": "update", "DELETE": "delete"}


class MissingApiKey(ProxyError):
    status_code = 401
    error_type = "invalid_request_error"
    code = None


class StoreUnavailable(ProxyError):
    status_code = 503
    error_type = "server_error"
    code = "store_unavailable"


@dataclass(frozen=True, slots=True)
class Call:
    action: Action
    ref: str  # the completion id from the path ("" for the list)


def match_route(method: str, path: str) -> Call | None:
    """The Stored Completions call ``method path`` names, or None (then it is forwarded)."""
    if path == LIST_PATH:
        return Call("list", "") if method == "GET" else None
    if not path.startswith(_ITEM_PREFIX):
        return None
    ref, sep, tail = path[len(_ITEM_PREFIX) :].partition("/")
    if not ref:
        return None
    if not sep:
        action = _ITEM_ACTIONS.get(method)
        return Call(action, ref) if action is not None else None
    if tail == "messages" and method == "GET":
        return Call("messages", ref)
    return None


class StoredCompletions:
    """The raw-ASGI handler for the calls ``match_route`` accepts."""

    def __init__(
        self,
        store: Store,
        *,
        fingerprint_secret: bytes,
        admin_token: str | None,
        pending: CapturePending | None = None,
    ) -> None:
        self._store = store
        self._pending = pending  # a completion whose capture is on its way: wait a moment
        self._secret = fingerprint_secret
        self._admin_token = admin_token.encode("utf-8") if admin_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = match_route(scope["method"], scope["path"])
        headers = [(b"content-type", b"application/json")]
        try:
            if call is None:
                raise RouteNotFound(f"Invalid URL ({scope['method']} {scope['path']})")
            status, body = 200, orjson.dumps(await self._answer(call, scope, receive))
        except ProxyError as exc:
            status, body = exc.status_code, exc.to_json()
            if exc.retry_after_s is not None:
                headers.append((b"retry-after", str(exc.retry_after_s).encode("ascii")))
        headers.append((b"content-length", str(len(body)).encode("ascii")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _answer(self, call: Call, scope: Scope, receive: Receive) -> dict[str, Any]:
        fingerprint = self._scope_of(scope["headers"])
        try:
            params = query_params(scope.get("query_string", b""))
            if call.action == "list":
                return await self._list(params, fingerprint)
            if call.action == "update":
                metadata = parse_update_body(await _read_body(receive))
                return await self._update(call.ref, metadata, fingerprint)
            page = parse_page_query(params) if call.action == "messages" else None
            if page is None:
                refuse_params(params)
            stored = await self._find(call.ref, fingerprint)
            if call.action == "retrieve":
                return completion_object(stored)
            if call.action == "delete":
                if not await self._store.delete_capture(stored.record.id):
                    raise _not_found(call.ref)
                return {
                    "object": "chat.completion.deleted",
                    "id": completion_id(stored.record),
                    "deleted": True,
                }
            assert page is not None
            return _messages_page(stored, page)
        except QueryError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        except StoreError as exc:
            logger.warning("stored completions: store failed: %s", exc)
            raise StoreUnavailable("The capture store is unavailable; try again.") from None

    def _scope_of(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """None (every capture) for the admin token, else the caller's key fingerprint."""
        credential = read_credential(headers)
        if not credential or credential.lower() == "bearer":
            raise MissingApiKey(
                "You didn't provide an API key. Provide it in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        if self._admin_token is not None and hmac.compare_digest(
            credential.encode("utf-8"), self._admin_token
        ):
            return None
        return key_fingerprint(self._secret, credential)

    async def _find(self, ref: str, fingerprint: str | None) -> StoredCapture:
        if len(ref) > MAX_ID_LENGTH:
            raise _not_found(ref)
        stored = await find_capture(
            self._pending,
            ref,
            lambda: self._store.get_capture(ref, key_fingerprint=fingerprint),
            what="completion",
        )
        if stored is None or not _visible(stored, fingerprint):
            raise _not_found(ref)
        return stored

    async def _list(self, params: Params, fingerprint: str | None) -> dict[str, Any]:
        query = parse_list_query(params)
        where = CaptureFilter(
            tags=query.tags,
            model=query.model,
            key_fingerprint=fingerprint,
            stored_completions=True,
        )
        cursor = await self._cursor(query.page.after, fingerprint)
        page = await self._store.list_captures(
            where, after=cursor, limit=query.page.limit, order=query.page.order
        )
        data = [completion_object(s) for s in page.items if _visible(s, fingerprint)]
        return _list_envelope(data, page.has_more)

    async def _cursor(self, after: str | None, fingerprint: str | None) -> str | None:
        """The capture id to page after: a capture id as is, a completion id looked up."""
        if after is None or is_capture_id(after):
            return after
        stored = None
        if len(after) <= MAX_ID_LENGTH:
            stored = await self._store.get_capture(after, key_fingerprint=fingerprint)
        if stored is None or not _visible(stored, fingerprint):
            raise InvalidRequest(f"No chat completion found with id '{after:.256}'.", param="after")
        return stored.record.id

    async def _update(
        self, ref: str, metadata: dict[str, str], fingerprint: str | None
    ) -> dict[str, Any]:
        stored = await self._find(ref, fingerprint)
        current = stored.record.tags
        patch = CapturePatch(
            add_tags={k: v for k, v in metadata.items() if current.get(k) != v},
            remove_tags=tuple(k for k in current if k not in metadata),
        )
        if not patch.is_empty():
            updated = await self._store.update_capture(stored.record.id, patch)
            if updated is None:
                raise _not_found(ref)
            stored = updated
        return completion_object(stored)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client disconnected before sending the body.")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


# -- answers -------------------------------------------------------------------------------------


def _visible(stored: StoredCapture, fingerprint: str | None) -> bool:
    """Shown to this caller: a stored completion, made with the caller's key (unless admin)."""
    record = stored.record
    if fingerprint is not None and record.key_fingerprint != fingerprint:
        return False
    return is_stored_completion(record)


def _not_found(ref: str) -> RouteNotFound:
    return RouteNotFound(f"No chat completion found with id '{ref:.256}'.", param="completion_id")


def _list_envelope(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _messages_page(stored: StoredCapture, page: PageQuery) -> dict[str, Any]:
    record = stored.record
    items = input_messages(record, completion_id(record))
    if page.order == "desc":
        items.reverse()
    if page.after is not None:
        position = _message_position(page.after, (completion_id(record), record.id), len(items))
        # asc: the positions after it; desc (reversed): the positions before it
        items = items[position + 1 :] if page.order == "asc" else items[len(items) - position :]
    return _list_envelope(items[: page.limit], len(items) > page.limit)


def _message_position(after: str, owners: tuple[str, ...], count: int) -> int:
    """The position in ``<completion_id>-<position>`` (the capture id is accepted as owner)."""
    owner, sep, tail = after.rpartition("-")
    if not sep or owner not in owners or not tail.isdigit() or int(tail) >= count:
        raise QueryError(f"No message found with id '{after:.256}'.", param="after")
    return int(tail)
