"""A small HTTP/1.1 client for one upstream origin: the relay's hot path.

Why not a general client: a relay needs little of one. It sends one request per connection at
a time to one origin chosen by the operator, never follows redirects, never decodes bodies,
keeps no cookies, and needs the body chunks exactly as they arrive. aiohttp's session machinery
and httpcore around the same work measured as the largest share of proxy CPU per request
(bench/RESULTS.md); this client is an asyncio ``Protocol`` around httptools' C parser (the one
uvicorn already uses for the server side) with a pool of keep-alive connections.

- A request is written with one ``transport.write``; ``Content-Length`` is always exact.
- Reading is flow-controlled: past ``_HIGH_WATER`` unread bytes the socket stops being read
  until the relay catches up, so a slow client back-pressures the upstream.
- A connection returns to the pool only after a complete response that allows keep-alive;
  anything else (a cancelled relay, an error, a HEAD, ``Connection: close``) closes it, which
  is also how a cancelled exchange tells the upstream to stop generating.
- Never retried: a request that fails is reported, whatever it was. A pooled connection is
  only reused while it is open and younger than ``keepalive_expiry``.
- Errors are httpx's exception classes, so callers map them as for any httpx transport.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class _Connection(asyncio.Protocol):
    """One upstream connection; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._headers: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._head_future: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: httpx.TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._head_only = False
        self._close_after = False
        self._keep_alive = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response from upstream: {exc}"))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.gone.done():
            self.gone.set_result(None)
        if not self._complete:
            if self._head_future is not None and not self._head_future.done():
                error: httpx.TransportError = httpx.RemoteProtocolError(
                    "upstream closed the connection without sending a response"
                )
            else:
                error = httpx.ReadError("upstream closed the connection mid-response")
            self._fail(error)

    # -- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()  # only meaningful until complete
        if self._head_only or self._status in (204, 304):
            self._complete = True  # no body follows; the connection is not reused
            self._close_after = True
        if self._head_future is not None and not self._head_future.done():
            self._head_future.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        self._wake()

    # -- the exchange ---------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        if self._error is None:
            self._error = error
        if self._head_future is not None and not self._head_future.done():
            self._head_future.set_exception(error)
        self._wake()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    async def request(self, head: bytes, body: bytes, head_only: bool) -> None:
        """Write the request and wait for the response head."""
        assert self.transport is not None
        self._reset()
        self._head_only = head_only
        loop = asyncio.get_running_loop()
        self._head_future = loop.create_future()
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        await self._head_future

    async def chunks(self) -> AsyncIterator[bytes]:
        chunks = self._chunks
        while True:
            if chunks:
                # Everything that has arrived goes on as one piece: pieces that came in one read
                # (an SSE server's events, written back to back) cost the relay one send, not one
                # each, and none of them waits for anything that has not arrived yet.
                chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                yield chunk
            elif self._complete:
                return
            elif self._error is not None:
                raise self._error
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    @property
    def reusable(self) -> bool:
        return (
            self._complete
            and not self._close_after
            and self._error is None
            and not self.lost
            and self._keep_alive
        )


class UpstreamResponse:
    """An upstream answer whose body has not been read yet: status, raw headers, raw chunks."""

    __slots__ = ("_closed", "_connection", "_pool", "headers", "status")

    def __init__(self, pool: Http1Pool, connection: _Connection) -> None:
        self._pool = pool
        self._connection = connection
        self._closed = False
        self.status = connection._status
        self.headers = connection._headers

    def chunks(self) -> AsyncIterator[bytes]:
        """The body exactly as it came off the wire, as soon as it arrived: each piece is all
        the body bytes received since the last one (the chunked encoding's framing removed)."""
        return self._connection.chunks()

    def close(self) -> None:
        """Give the connection back (complete, keep-alive) or close it (anything else)."""
        if not self._closed:
            self._closed = True
            self._pool._release(self._connection)


class Http1Pool:
    """Keep-alive connections to one origin (``scheme://host[:port]``)."""

    def __init__(
        self,
        origin: str,
        *,
        connect_timeout: float,
        max_connections: int,
        keepalive_expiry: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(origin)
        self._secure = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._secure else 80)
        default_port = parts.port is None
        host_header = self._host if default_port else f"{self._host}:{self._port}"
        if ":" in self._host and not self._host.startswith("["):  # IPv6 literal
            host_header = f"[{self._host}]" if default_port else f"[{self._host}]:{self._port}"
        self._host_header = host_header.encode("ascii")
        self._ssl: ssl.SSLContext | None = None
        if self._secure:
            self._ssl = ssl_context or ssl.create_default_context()
        self._connect_timeout = connect_timeout
        self._keepalive_expiry = keepalive_expiry
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def open(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        """Send one request, once; return when the response head is in."""
        lines = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", self._host_header]
        for name, value in headers:
            lines += (b"\r\n", name, b": ", value)
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines += (b"\r\ncontent-length: ", str(len(body)).encode("ascii"))
        lines.append(b"\r\n\r\n")
        head = b"".join(lines)
        await self._slots.acquire()
        try:
            connection = self._reuse() or await self._connect()
            try:
                await connection.request(head, body, method == "HEAD")
            except BaseException:
                connection._close()
                raise
        except BaseException:
            self._slots.release()
            raise
        return UpstreamResponse(self, connection)

    def _reuse(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # most recently used: the least likely to be stale
            if connection.lost or now - connection.idle_since > self._keepalive_expiry:
                connection._close()
                continue
            return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, connection = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("upstream connect timeout") from exc
        except ssl.SSLError as exc:
            raise httpx.ConnectError(f"TLS handshake with upstream failed: {exc}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to upstream: {exc.strerror or exc}") from exc
        connection.transport = transport  # uvloop may call connection_made only later
        return connection

    def _release(self, connection: _Connection) -> None:
        self._slots.release()
        if connection.reusable and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection._close()

    async def aclose(self) -> None:
        """Close the idle connections and wait (briefly) until their sockets are released."""
        self._closed = True
        closing = []
        while self._idle:
            connection = self._idle.pop()
            connection._close()
            closing.append(connection.gone)
        if closing:
            await asyncio.wait(closing, timeout=1.0)


class Http1Transport(httpx.AsyncBaseTransport):
    """httpx's transport interface over the pool, for code that wants ``httpx.AsyncClient``.

    Requests must go to the pool's origin (the operator's upstream); bodies must be bytes.
    """

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if (url.scheme, url.host) != ("https" if self.pool._secure else "http", self.pool._host):
            raise httpx.UnsupportedProtocol(f"this transport only reaches {self.pool._host}")
        skip = (b"host", b"content-length", b"transfer-encoding", b"connection")
        headers = [(k.lower(), v) for k, v in request.headers.raw if k.lower() not in skip]
        read_timeout = request.extensions.get("timeout", {}).get("read")
        try:
            async with asyncio.timeout(read_timeout):
                upstream = await self.pool.open(
                    request.method, url.raw_path, headers, request.content
                )
        except TimeoutError as exc:
            raise httpx.ReadTimeout("upstream read timeout", request=request) from exc
        return httpx.Response(
            status_code=upstream.status,
            headers=upstream.headers,
            stream=_ResponseStream(upstream, read_timeout),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self.pool.aclose()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, upstream: UpstreamResponse, read_timeout: float | None) -> None:
        self._upstream = upstream
        self._read_timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._upstream.chunks()
        while True:
            try:
                async with asyncio.timeout(self._read_timeout):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise httpx.ReadTimeout("upstream read timeout") from exc
            yield chunk

    async def aclose(self) -> None:
        self._upstream.close()
