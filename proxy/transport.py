"""An httpx transport on aiohttp's connection pool.

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
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
from multidict import CIMultiDict
from yarl import URL

_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@contextmanager
def _map_aiohttp_errors() -> Iterator[None]:
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timeout") from exc
    except (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "read timeout") from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(str(exc) or "server disconnected") from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
        raise httpx.ReadError(str(exc) or "read error") from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
    except TimeoutError as exc:  # aiohttp may raise the plain one on read timeouts
        raise httpx.ReadTimeout("read timeout") from exc


class _ResponseStream(httpx.AsyncByteStream):
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        with _map_aiohttp_errors():
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                yield chunk

    async def aclose(self) -> None:
        # An unfinished body makes aiohttp close the connection instead of pooling it, which
        # is how a cancelled relay tells the upstream to stop generating.
        self._response.release()


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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content  # the relay always builds requests from bytes
        with _map_aiohttp_errors():
            response = await self._session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=CIMultiDict(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                ),
                data=body or None,
                allow_redirects=False,
                compress=False,
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    async def aclose(self) -> None:
        await self._session.close()
