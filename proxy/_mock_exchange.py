"""The response side of one mock-upstream request, and the record the mock keeps of it.

`Exchange` sends headers and body pieces, waits in a way that notices a client leaving (it watches
`receive()` for `http.disconnect` while it sleeps), and can drop the TCP connection mid-response.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, cast

from starlette.types import Receive, Scope, Send

from proxy._mock_plan import Plan

_CLOSE_GRACE_S = 5.0
_STATIC_HEADERS = (
    (b"openai-version", b"2020-10-01"),
    (b"openai-organization", b"stillroom-mock"),
    (b"openai-project", b"proj_stillroom_mock"),
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-limit-tokens", b"30000000"),
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-remaining-tokens", b"29999000"),
    (b"x-ratelimit-reset-requests", b"6ms"),
    (b"x-ratelimit-reset-tokens", b"2ms"),
    (b"access-control-expose-headers", b"X-Request-ID"),
)


class RecordedRequest:
    """One /v1 request as the mock received it. Cheap to make: decoding waits for `as_json`."""

    __slots__ = (
        "seq",
        "request_id",
        "method",
        "path",
        "query",
        "headers",
        "digest",
        "body_len",
        "disconnected_at",
        "completed",
    )

    def __init__(self, seq: int, scope: Scope, digest: bytes, body_len: int) -> None:
        self.seq = seq
        self.request_id = b"req_%s%016x" % (digest[:8].hex().encode(), seq)
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: bytes = scope["query_string"]
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.digest = digest
        self.body_len = body_len
        self.disconnected_at: float | None = None  # time.time() when the client was seen leaving
        self.completed = False  # the whole response went out

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query.decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
            "body_sha256": self.digest.hex(),
            "body_len": self.body_len,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "request_id": self.request_id.decode(),
            **self.describe(),
            "disconnected_at": self.disconnected_at,
            "completed": self.completed,
        }


class _Transport(Protocol):
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def _transport_of(send: Send) -> _Transport | None:
    """The server's transport behind `send` (uvicorn binds `send` to an object holding it)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return cast(_Transport, transport) if hasattr(transport, "abort") else None


class Exchange:
    """The response side of one request: headers, body pieces, delays that notice a disconnect."""

    __slots__ = ("record", "receive", "send", "started")

    def __init__(
        self, record: RecordedRequest, receive: Receive, send: Send, started: float
    ) -> None:
        self.record = record
        self.receive = receive
        self.send = send
        self.started = started

    def client_left(self) -> bool:
        """Record that the client went away (first sighting wins); False, i.e. "not connected"."""
        if self.record.disconnected_at is None:
            self.record.disconnected_at = time.time()
        return False

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds`; False (and the time recorded) if the client left first."""
        if self.record.disconnected_at is not None:
            return False
        try:
            async with asyncio.timeout(seconds):
                while (await self.receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            return True
        return self.client_left()

    async def is_connected(self) -> bool:
        """Look at `receive()` without waiting (one loop turn) to see whether the client left."""
        if self.record.disconnected_at is not None:
            return False
        try:
            async with asyncio.timeout(0):
                message = await self.receive()
        except TimeoutError:
            return True
        return message["type"] != "http.disconnect" or self.client_left()

    async def start(
        self,
        status: int,
        content_type: bytes,
        length: int | None = None,
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        took = int((time.perf_counter() - self.started) * 1000)
        headers = [
            (b"content-type", content_type),
            (b"x-request-id", self.record.request_id),
            (b"openai-processing-ms", b"%d" % took),
            *_STATIC_HEADERS,
            *extra,
        ]
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, chunk: bytes, *, more: bool) -> None:
        await self.send({"type": "http.response.body", "body": chunk, "more_body": more})
        if not more:
            self.record.completed = True

    async def reply(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        *,
        wait: float = 0.0,
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        await self.start(status, content_type, len(body), extra)
        if wait and not await self.pause(wait):
            return
        await self.body(body, more=False)

    async def stream(self, pieces: Iterator[bytes], plan: Plan, *, gap: float) -> None:
        """Send each piece with its own `send`; honour first-byte, gap and cut-after."""
        if plan.first_byte and not await self.pause(plan.first_byte):
            return
        sent, cut_after = 0, plan.cut_after
        piece = next(pieces, None)
        while piece is not None:
            if sent == cut_after:
                return await self.close_connection(reset=plan.reset)
            if sent and gap and not await self.pause(gap):
                return
            upcoming = next(pieces, None)
            if upcoming is None and cut_after is None:
                if await self.is_connected():
                    await self.body(piece, more=False)
                return
            await self.body(piece, more=True)
            sent += 1
            piece = upcoming
        if cut_after is not None:
            await self.close_connection(reset=plan.reset)
        else:
            await self.body(b"", more=False)

    async def close_connection(self, *, reset: bool) -> None:
        """Drop the TCP connection now: FIN after what was sent, or RST (SO_LINGER 0) if `reset`."""
        transport = _transport_of(self.send)
        if transport is None:
            return  # the server closes it when we return unfinished
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
        try:  # let the server see the connection go, so it does not log an unfinished response
            async with asyncio.timeout(_CLOSE_GRACE_S):
                while (await self.receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            transport.abort()


async def read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body, and False if the client left before sending all of it."""
    message = await receive()
    if message["type"] != "http.request":
        return b"", False
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body, True
    parts = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), False
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts), True
