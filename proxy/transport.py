"""An httpx transport on aiohttp's connection pool, with a lean path for the relay.

We keep httpx's API (``httpx.Request`` in, ``httpx.Response`` out, httpx's exception classes) and
put aiohttp's pool under it, because httpx's own pool (httpcore) costs several times more CPU per
request and collapses under many concurrent streams (see bench/RESULTS.md). The transport is made
for a relay:

- bodies are never decoded (``auto_decompress=False``): ``aiter_raw`` yields the upstream's bytes;
- aiohttp adds no headers of its own (no User-Agent, Accept, Accept-Encoding, Content-Type);
- no cookie jar (one client's cookies must never reach another), no redirects, no env proxies;
- the request target is sent as given (``encoded=True``), never re-normalised;
- chunks are yielded as they arrive (``iter_any``), so stream chunk boundaries keep their timing;
- aiohttp's exceptions become the matching httpx ones.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
from multidict import CIMultiDict
from yarl import URL

_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def _httpx_error(exc: Exception) -> httpx.TransportError:
    """The httpx exception that matches an aiohttp (or timeout) exception."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return httpx.ReadError(message)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message)
    return httpx.RemoteProtocolError(message)  # ServerDisconnectedError and the rest


_AIOHTTP_ERRORS = (aiohttp.ClientError, TimeoutError)


class UpstreamResponse:
    """An upstream answer whose body has not been read yet: status, raw headers, raw chunks."""

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: tuple[tuple[bytes, bytes], ...] = response.raw_headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body exactly as it came off the wire, each chunk as soon as it arrived."""
        content = self._response.content
        try:
            while chunk := await content.readany():
                yield chunk
        except _AIOHTTP_ERRORS as exc:
            raise _httpx_error(exc) from exc

    def close(self) -> None:
        # An unfinished body makes aiohttp close the connection instead of pooling it, which
        # is how a cancelled relay tells the upstream to stop generating.
        self._response.release()


class _ResponseStream(httpx.AsyncByteStream):
    __slots__ = ("_upstream",)

    def __init__(self, upstream: UpstreamResponse) -> None:
        self._upstream = upstream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._upstream.chunks()

    async def aclose(self) -> None:
        self._upstream.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Owns one ``aiohttp.ClientSession``; create it inside a running event loop."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=max_connections,
            keepalive_timeout=keepalive_expiry,
            ssl=ssl_context if ssl_context is not None else True,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=connect_timeout, sock_read=read_timeout
            ),
        )

    async def open(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        """Send one request, once; return when the response headers are in.

        The relay's hot path: no ``httpx.Request``/``Response`` objects, which measured as about
        a quarter of the proxy's CPU per request (URL re-parsing, header objects, cookie
        extraction). Errors are httpx's exception classes, as with ``handle_async_request``.
        """
        try:
            response = await self._session.request(
                method,
                URL(url, encoded=True),
                headers=CIMultiDict(headers),
                data=body or None,
                allow_redirects=False,
                compress=False,
            )
        except _AIOHTTP_ERRORS as exc:
            raise _httpx_error(exc) from exc
        return UpstreamResponse(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        upstream = await self.open(
            request.method,
            str(request.url),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            request.content,  # requests through this transport are always built from bytes
        )
        return httpx.Response(
            status_code=upstream.status,
            headers=list(upstream.headers),
            stream=_ResponseStream(upstream),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self._session.close()
