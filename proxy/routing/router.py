"""``Router``: applies the routes on the data path — decide, let the student answer (with the
teacher behind it), and shadow.

``decide`` runs for ``POST /v1/chat/completions`` only while at least one route exists: it
parses the body, matches a route by model and tags, and returns ``proxy.routing.decide``'s
decision (None: no route; the request is the proxy's usual relay).

``answer`` lets the student answer a request routed to it. The client's body goes to the
student with the student's model name and without the client's credentials (the student gets
its own key, from the environment variable the route names, or none). The teacher steps in,
with nothing yet sent to the client, on a connection error, no first byte within the route's
``timeout_s``, a 5xx, and, for an answer that is not streamed, a body that is not a chat
completion, content that is not JSON (or breaks the schema) under ``response_format``, or a
tool call to an unknown tool or whose arguments break the tool's schema. A streamed answer is
committed at its first byte; a failure after that aborts the stream as the teacher's would.
Every outcome is reported to the route table (rollback) and counted in the metrics.

``shadow`` queues a request the teacher answered for the student (``proxy.routing.shadow``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from proxy.routing.decide import Decision, Fingerprint, decide
from proxy.routing.routes import Route
from proxy.routing.shadow import Shadows
from proxy.routing.table import RouteTable
from proxy.tags import metadata_tags, parse_tags
from proxy.types import Send
from storage.models import CaptureRecord

logger = logging.getLogger("stillroom.routing")

CHAT_PATH = "/v1/chat/completions"
MAX_STUDENT_BODY = 16 * 1024 * 1024
SERVED_BY_HEADER = b"x-stillroom-served-by"


@dataclass(frozen=True, slots=True)
class Fallback:
    """Why the teacher stepped in (nothing was sent to the client)."""

    reason: str


class Router:
    def __init__(self, table: RouteTable, shadow: Shadows | None = None) -> None:
        self.table = table
        self.shadow_sender = shadow
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._teacher_slots: dict[str, int] = {}  # teacher shadows in flight, per route
        self.counts: dict[tuple[str, str], int] = {}  # (route, outcome) -> requests

    async def stop(self) -> None:
        """Stop shadowing (what is queued is dropped), the route refresh, the clients."""
        if self.shadow_sender is not None:
            await self.shadow_sender.stop()
        await self.table.stop()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    # -- the decision -------------------------------------------------------------------------

    def decide(
        self,
        method: str,
        path: str,
        body: bytes,
        ours: dict[bytes, bytes],
        fingerprint: Fingerprint,
    ) -> tuple[Decision, dict[str, Any]] | None:
        if not self.table.routes or method != "POST" or path != CHAT_PATH:
            return None
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(request, dict):
            return None
        tags = metadata_tags(request)
        header = ours.get(b"x-stillroom-tags")
        if header:
            try:
                tags.update(parse_tags(header.decode("latin-1"), "X-Stillroom-Tags"))
            except ValueError:
                return None  # the capture policy answers the 400
        route = self.table.match(request.get("model"), tags)
        if route is None:
            return None
        return decide(route, request, fingerprint), request

    def count(self, route: Route, outcome: str) -> None:
        key = (route.name, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    # -- the student answers ------------------------------------------------------------------

    async def answer(
        self, decision: Decision, request: dict[str, Any], send: Send, tee: Any | None
    ) -> int | Fallback:
        """Send the student's answer to the client (its status), or a ``Fallback``."""
        route = decision.route
        started = time.perf_counter()
        body = orjson.dumps({**request, "model": route.student.model})
        client = self._client(route)
        headers = {"content-type": "application/json"}
        if route.student.api_key_env:
            key = os.environ.get(route.student.api_key_env)
            if key:
                headers["authorization"] = f"Bearer {key}"
        streamed = request.get("stream") is True
        try:
            response = await client.send(
                client.build_request("POST", "/chat/completions", content=body, headers=headers),
                stream=True,
            )
        except httpx.TimeoutException:
            return self._fell_back(route, "student timeout before the first byte")
        except httpx.TransportError as exc:
            return self._fell_back(route, f"student unreachable: {type(exc).__name__}")
        try:
            if response.status_code >= 500:
                return self._fell_back(route, f"student answered {response.status_code}")
            if not streamed:
                try:
                    content = await _read_capped(response)
                except httpx.TimeoutException:
                    return self._fell_back(route, "student timeout")
                except (httpx.TransportError, ValueError) as exc:
                    return self._fell_back(route, f"student answer unreadable: {exc}")
                if response.status_code < 300:
                    problem = check_answer(request, content)
                    if problem is not None:
                        return self._fell_back(route, problem)
                status = await self._send_whole(route, response, content, send, tee, started)
            else:
                iterator = response.aiter_raw()
                try:
                    first = await anext(iterator, b"")
                except httpx.TimeoutException:
                    return self._fell_back(route, "student timeout before the first byte")
                except httpx.TransportError as exc:
                    return self._fell_back(route, f"student failed: {type(exc).__name__}")
                status = await self._send_stream(
                    route, response, first, iterator, send, tee, started
                )
        finally:
            await response.aclose()
        self.table.record(route, fell_back=False)
        self.count(route, "student")
        return status

    def _fell_back(self, route: Route, reason: str) -> Fallback:
        logger.info("route %s: the teacher steps in: %s", route.name, reason)
        self.table.record(route, fell_back=True)
        self.count(route, "fallback")
        return Fallback(reason)

    def _client(self, route: Route) -> httpx.AsyncClient:
        key = f"{route.student.base_url}|{route.timeout_s}"
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = httpx.AsyncClient(
                base_url=route.student.base_url,
                timeout=httpx.Timeout(route.timeout_s, connect=min(route.timeout_s, 5.0)),
                trust_env=False,
                follow_redirects=False,
            )
        return client

    def _headers(self, route: Route, response: httpx.Response) -> list[tuple[bytes, bytes]]:
        from proxy import headers as header_policy

        out = header_policy.client_response_headers(
            (name, value) for name, value in response.headers.raw
        )
        out = [
            (n, v)
            for n, v in out
            if n not in (b"content-length", b"content-encoding")
            and not n.startswith(b"x-stillroom-")  # ours to set (student serve sets its own)
        ]
        out.append((SERVED_BY_HEADER, route.served_by.encode()))
        return out

    async def _send_whole(
        self,
        route: Route,
        response: httpx.Response,
        content: bytes,
        send: Send,
        tee: Any | None,
        started: float,
    ) -> int:
        headers = self._headers(route, response)
        headers.append((b"content-length", str(len(content)).encode()))
        if tee is not None:
            tee.on_response_start(response.status_code, headers)
            headers.append((b"x-stillroom-capture-id", tee.capture_id.encode()))
            tee.on_chunk(content)
        outcome, error = "completed", None
        try:
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            await send({"type": "http.response.body", "body": content, "more_body": False})
        except OSError:
            outcome, error = "client_disconnected", "client connection lost"
        if response.status_code >= 400 and outcome == "completed":
            outcome, error = "upstream_error", f"student answered {response.status_code}"
        if tee is not None:
            tee.on_end(outcome, error, time.perf_counter() - started)
        return response.status_code

    async def _send_stream(
        self,
        route: Route,
        response: httpx.Response,
        first: bytes,
        rest: Any,
        send: Send,
        tee: Any | None,
        started: float,
    ) -> int:
        headers = self._headers(route, response)
        ttfb = time.perf_counter() - started
        if tee is not None:
            tee.on_response_start(response.status_code, headers)
            headers.append((b"x-stillroom-capture-id", tee.capture_id.encode()))
        outcome, error = "completed", None
        try:
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            chunk = first
            while chunk:
                if tee is not None:
                    tee.on_chunk(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await anext(rest, b"")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.HTTPError as exc:
            outcome, error = "upstream_error", f"student failed mid-stream: {type(exc).__name__}"
            logger.warning("route %s: %s; aborting the client stream", route.name, error)
            self.table.record(route, fell_back=True)
        except OSError:
            outcome, error = "client_disconnected", "client connection lost"
        if tee is not None:
            tee.on_end(outcome, error, ttfb)
        return response.status_code

    # -- shadow -------------------------------------------------------------------------------

    def take_teacher_slot(self, route: Route) -> bool:
        """A slot for one teacher shadow of ``route`` (at most ``max_concurrency``)."""
        used = self._teacher_slots.get(route.name, 0)
        if used >= route.max_concurrency:
            self.count(route, "teacher_shadow_skipped")
            return False
        self._teacher_slots[route.name] = used + 1
        return True

    def give_teacher_slot(self, route: Route) -> None:
        self._teacher_slots[route.name] = max(0, self._teacher_slots.get(route.name, 0) - 1)

    def keep_pair(
        self,
        decision: Decision,
        request: dict[str, Any],
        *,
        teacher: CaptureRecord,
        student: CaptureRecord,
    ) -> None:
        """Score and keep a pair both sides of which were captured (full mode's teacher shadow)."""
        if self.shadow_sender is not None:
            self.count(decision.route, "teacher_shadow")
            self.shadow_sender.keep_captured(decision.route, request, teacher, student)

    def shadow(
        self, decision: Decision, request: dict[str, Any], record: CaptureRecord | None
    ) -> None:
        """Queue the teacher's captured exchange for the student (no capture: no shadow)."""
        if self.shadow_sender is not None and record is not None:
            self.shadow_sender.submit(decision.route, request, record)


async def _read_capped(response: httpx.Response) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_STUDENT_BODY:
            raise ValueError(f"larger than {MAX_STUDENT_BODY} bytes")
        parts.append(chunk)
    return b"".join(parts)


def check_answer(request: dict[str, Any], content: bytes) -> str | None:
    """Why a non-streamed student answer must not reach the client (None: it may)."""
    from proxy.evals import _json

    try:
        answer = orjson.loads(content)
        message = answer["choices"][0]["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return "the student's answer is not a chat completion"
    if not isinstance(message, dict):
        return "the student's answer is not a chat completion"
    text = message.get("content")
    if _json.asks_for_json(request) and not message.get("tool_calls"):
        if not isinstance(text, str) or not _json.is_json_document(text):
            return "the student's answer is not JSON under response_format"
        schema = _json.request_schema(request)
        if isinstance(schema, dict) and not _valid(schema, text):
            return "the student's answer breaks the response_format schema"
    tools = {
        tool["function"]["name"]: tool["function"].get("parameters")
        for tool in request.get("tools") or []
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    }
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if name not in tools:
            return f"the student called an unknown tool {str(name)[:40]!r}"
        try:
            arguments = orjson.loads((function or {}).get("arguments") or "")
        except orjson.JSONDecodeError:
            return f"the student's arguments for {name} are not JSON"
        schema = tools[name]
        if not isinstance(arguments, dict):
            return f"the student's arguments for {name} are not an object"
        if isinstance(schema, dict) and not _valid(schema, orjson.dumps(arguments).decode()):
            return f"the student's arguments for {name} break the tool's schema"
    return None


def _valid(schema: dict[str, Any], text: str) -> bool:
    from proxy.evals import _json

    validator = _json.validator(_json.canonical(schema))
    if validator is None:
        return True  # a schema we cannot compile: not the student's fault
    try:
        return bool(validator.is_valid(orjson.loads(text)))
    except orjson.JSONDecodeError:
        return False
