"""The relay: one client request in, one upstream request out, the answer streamed back.

This is the hot path, written as a raw ASGI callable (no middleware, no per-chunk task, no
re-serialising). Per request it:

1. refuses what it will not forward (dot segments, conflicting framing, bodies over the cap: 413
   before anything goes upstream, whether the length is declared or the body is chunked);
2. reads the raw body (bytes exactly as sent) and builds the upstream request: the operator's
   upstream + the raw path and query, the client's headers through ``headers.py``;
3. sends it once (a POST is never retried) and relays status, headers and raw body chunks as
   they arrive; every chunk is offered to the exchange's ``Tee`` (the capture seam) unchanged;
4. watches the client: a disconnect, at any time, cancels the upstream request at once;
5. enforces the first-byte deadline, then the idle deadline between body chunks, with one lazy
   timer per request (a chunk only stamps the time);
6. ends each exchange in exactly one ``Outcome`` and reports it to the tee and the metrics.

While routes exist, ``proxy.routing.exchange`` decides before step 3 whether the student
answers instead, and queues the shadow after it.

Errors of the proxy's own become OpenAI-shaped JSON (``errors.py``). Once the response has
started its status cannot change: an upstream failure mid-body aborts the client connection
without the chunked terminator, so the client sees a broken stream, never a clean one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import httpx

from proxy import headers as header_policy
from proxy.errors import (
    InvalidRequest,
    ProxyBusy,
    ProxyError,
    RequestTooLarge,
    RouteNotFound,
    ShuttingDown,
    UpstreamTimeout,
    upstream_error,
)
from proxy.http1 import UpstreamResponse
from proxy.metrics import ProxyMetrics, route_template
from proxy.routing.exchange import ExchangeRouting
from proxy.routing.router import SERVED_BY_HEADER, Router
from proxy.tasks import spawn
from proxy.types import Receive, Scope, Send
from storage.models import Outcome

logger = logging.getLogger("stillroom.forward")


class Tee(Protocol):
    """Receives a copy of one exchange; implemented by capture. Must never raise or block."""

    capture_id: str

    def on_response_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def on_chunk(self, chunk: bytes) -> None: ...

    def on_end(self, outcome: Outcome, error: str | None, ttfb: float | None) -> None: ...


class UpstreamPool(Protocol):
    """Where requests go: the operator's upstream origin, through one pool of connections."""

    async def open(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse: ...


class _Request(NamedTuple):
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


class TeeFactory(Protocol):
    """Decides whether an exchange is copied; returns None to skip it (the common cheap case)."""

    def __call__(
        self, scope: Scope, body: bytes, stillroom_headers: dict[bytes, bytes]
    ) -> Tee | None: ...


@dataclass(frozen=True, slots=True)
class RelayConfig:
    upstream_path: str  # the upstream base URL's path prefix ("" or e.g. "/openai")
    upstream_api_key: str | None
    max_request_bytes: int
    max_buffered_bytes: int  # request bytes all exchanges in progress may hold together
    first_byte_timeout: float
    idle_timeout: float


class _Watch:
    """Per-request cancellation state: client gone, or a deadline passed."""

    __slots__ = ("task", "loop", "handle", "last", "first_byte_seen", "gone", "timed_out", "done")

    def __init__(
        self,
        task: asyncio.Task[object],
        loop: asyncio.AbstractEventLoop,
        first_byte_timeout: float,
        on_deadline: Callable[[_Watch], None],
    ) -> None:
        self.task = task
        self.loop = loop
        self.last = loop.time()
        self.handle = loop.call_at(self.last + first_byte_timeout, on_deadline, self)
        self.first_byte_seen = False
        self.gone = False
        self.timed_out = False
        self.done = False


def _has_dot_segment(path: str) -> bool:
    return "/./" in path or "/../" in path or path.endswith(("/.", "/.."))


class Forwarder:
    """ASGI app for ``/v1/...``: forwards to the upstream through the connection pool."""

    def __init__(
        self,
        config: RelayConfig,
        upstream: UpstreamPool,
        metrics: ProxyMetrics,
        tee_factory: TeeFactory | None = None,
        router: Router | None = None,
    ) -> None:
        self._config = config
        self._pool = upstream
        self._metrics = metrics
        self._tee_factory = tee_factory
        self._routing = (
            ExchangeRouting(
                router, upstream, self._tee, config.first_byte_timeout + config.idle_timeout
            )
            if router is not None
            else None
        )
        self._prefix = config.upstream_path.encode("ascii")
        self.active = 0  # exchanges in progress; shutdown waits for it to reach 0
        self.buffered = 0  # request-body bytes held by exchanges in progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_template(scope["path"])
        method = scope["method"]
        metrics = self._metrics
        metrics.in_flight.inc()
        self.active += 1
        status = 0
        try:
            status = await self._exchange(scope, receive, send, route)
        finally:
            self.active -= 1
            metrics.in_flight.dec()
            metrics.count_request(route, method, status)

    async def _exchange(self, scope: Scope, receive: Receive, send: Send, route: str) -> int:
        hold = _Hold()
        try:
            return await self._exchange_held(scope, receive, send, route, hold)
        finally:
            self.buffered -= hold.bytes

    def _take(self, hold: _Hold, size: int) -> None:
        """Count ``size`` more body bytes against the global budget, or refuse with 503."""
        if self.buffered + size > self._config.max_buffered_bytes:
            raise ProxyBusy("The proxy is holding too many request bodies; retry shortly.")
        self.buffered += size
        hold.bytes += size

    async def _exchange_held(
        self, scope: Scope, receive: Receive, send: Send, route: str, hold: _Hold
    ) -> int:
        try:
            body = await self._read_request(scope, receive, hold)
            ready = time.perf_counter()  # from here on the time is the proxy's own
        except ProxyError as exc:
            self._metrics.count_proxy_error(exc)
            return await _send_error(send, exc)
        if body is None:  # client left while sending its body
            self._metrics.client_disconnects.inc()
            return 499

        out_headers, ours = header_policy.upstream_request_headers(
            scope["headers"], self._config.upstream_api_key
        )
        routing = self._routing
        routed = routing.decide(scope, body, ours) if routing is not None else None
        extra = [(SERVED_BY_HEADER, b"teacher")] if routed is not None else []
        target = self._prefix + (scope.get("raw_path") or scope["path"].encode())
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        request = _Request(scope["method"], target, out_headers, body)
        try:
            tee = self._tee(scope, body, ours)
            if routing is not None and routed is not None and routed.decision.target == "student":
                status = await routing.answer(routed, scope, body, ours, request, send, tee)
                if status is not None:
                    return status
                tee = self._tee(scope, body, ours)  # a new capture: the teacher's answer
        except ProxyError as exc:  # bad X-Stillroom-* input: refused before going upstream
            self._metrics.count_proxy_error(exc)
            return await _send_error(send, exc)
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        watch = _Watch(
            task, asyncio.get_running_loop(), self._config.first_byte_timeout, self._check_deadline
        )
        watcher = spawn(_watch_disconnect(receive, watch), name="stillroom-disconnect-watch")
        started = time.perf_counter()
        try:
            status = await self._relay(
                request, send, watch, tee, route, started, extra, added=started - ready
            )
        finally:
            watch.done = True
            watch.handle.cancel()
            watcher.cancel()
        if routing is not None and routed is not None:
            routing.after(routed, status, tee)
        return status

    def _tee(self, scope: Scope, body: bytes, ours: dict[bytes, bytes]) -> Tee | None:
        return self._tee_factory(scope, body, ours) if self._tee_factory is not None else None

    async def _relay(
        self,
        request: _Request,
        send: Send,
        watch: _Watch,
        tee: Tee | None,
        route: str,
        started: float,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        added: float = 0.0,
    ) -> int:
        """Relay one exchange; ``added`` is the proxy's own time before it went upstream."""
        response: UpstreamResponse | None = None
        response_started = False
        ttfb: float | None = None
        status = 0
        outcome: Outcome = "completed"
        error: str | None = None
        try:
            try:
                response = await self._pool.open(*request)
            except httpx.TransportError as exc:
                raise upstream_error(exc) from exc
            status = response.status
            headers = header_policy.client_response_headers(response.headers)
            if extra:
                headers.extend(extra)
            if tee is not None:
                tee.on_response_start(status, headers)
                headers.append((b"x-stillroom-capture-id", tee.capture_id.encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            response_started = True
            try:
                async for chunk in response.chunks():
                    watch.last = watch.loop.time()
                    if not watch.first_byte_seen:
                        watch.first_byte_seen = True
                        watch.handle.cancel()  # from here on the (shorter) idle deadline rules
                        watch.handle = watch.loop.call_at(
                            watch.last + self._config.idle_timeout, self._check_deadline, watch
                        )
                        ttfb = time.perf_counter() - started
                        self._metrics.observe_ttfb(route, ttfb)
                    if tee is not None:
                        tee.on_chunk(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.TransportError as exc:
                raise upstream_error(exc) from exc
            watch.done = True
            upstream_done = time.perf_counter()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self._metrics.observe_added(route, added + time.perf_counter() - upstream_done)
            if status >= 400:
                outcome, error = "upstream_error", f"upstream answered {status}"
        except asyncio.CancelledError:
            # Client gone, deadline passed, or the server cut us at the end of the drain window:
            # all three end this exchange here, with its outcome recorded (not a crash).
            watch.task.uncancel()
            outcome, error, status = self._cancelled(watch, status)
            if outcome == "upstream_timeout" and response_started:
                logger.warning("%s; aborting the client stream", error)
            elif not response_started and outcome == "upstream_timeout":
                status = await _send_error(send, UpstreamTimeout("upstream first byte timeout"))
            elif not response_started and outcome == "interrupted":
                status = await _send_error(send, ShuttingDown("proxy is shutting down; retry"))
        except ProxyError as exc:
            self._metrics.count_proxy_error(exc)
            outcome = "upstream_timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
            error = exc.message
            if response_started:
                logger.warning(
                    "upstream failed mid-response (%s); aborting the client stream", error
                )
            else:
                status = await _send_error(send, exc)
        except OSError:  # the client's socket failed while we were writing to it
            outcome, error = "client_disconnected", "client connection lost"
        finally:
            if response is not None:
                response.close()
            self._metrics.observe_latency(route, time.perf_counter() - started)
            if outcome == "client_disconnected":
                self._metrics.client_disconnects.inc()
            if tee is not None:
                tee.on_end(outcome, error, ttfb)
        return status

    def _cancelled(self, watch: _Watch, status: int) -> tuple[Outcome, str | None, int]:
        if watch.gone:
            return "client_disconnected", "client disconnected", 499
        if watch.timed_out:
            phase = "idle" if watch.first_byte_seen else "first byte"
            return "upstream_timeout", f"upstream {phase} timeout", status
        return "interrupted", "proxy shutting down", status

    def _check_deadline(self, watch: _Watch) -> None:
        if watch.done:
            return
        limit = (
            self._config.idle_timeout if watch.first_byte_seen else self._config.first_byte_timeout
        )
        deadline = watch.last + limit
        if watch.loop.time() >= deadline:
            watch.timed_out = True
            watch.task.cancel()
        else:
            watch.handle = watch.loop.call_at(deadline, self._check_deadline, watch)

    async def _read_request(self, scope: Scope, receive: Receive, hold: _Hold) -> bytes | None:
        path: str = scope["path"]
        if _has_dot_segment(path):
            raise RouteNotFound(f"Invalid URL ({scope['method']} {path})")
        client_headers = scope["headers"]
        if header_policy.has_conflicting_framing(client_headers):
            raise InvalidRequest("request has both Content-Length and Transfer-Encoding")
        limit = self._config.max_request_bytes
        try:
            declared = header_policy.declared_length(client_headers)
        except ValueError as exc:
            raise InvalidRequest("malformed Content-Length header") from exc
        if declared is not None:
            if declared > limit:
                raise RequestTooLarge(_too_large(limit))
            self._take(hold, declared)  # before reading a byte of it
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise RequestTooLarge(_too_large(limit))
            if declared is None:
                self._take(hold, len(body))
            return body
        parts = [body]
        size = len(body)
        if declared is None:
            self._take(hold, size)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(_too_large(limit))
            if declared is None:
                self._take(hold, len(chunk))
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


class _Hold:
    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


def _too_large(limit: int) -> str:
    return f"Request body is larger than the proxy's limit of {limit} bytes."


async def _watch_disconnect(receive: Receive, watch: _Watch) -> None:
    while not watch.done:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not watch.done:
                watch.gone = True
                watch.task.cancel()
            return


async def _send_error(send: Send, exc: ProxyError) -> int:
    body = exc.to_json()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return exc.status_code
