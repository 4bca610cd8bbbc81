"""The relay's HTTP/1.1 client, also through httpx's API (``Http1Transport``)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from proxy.http1 import Http1Pool, Http1Transport


@pytest.mark.anyio
async def test_httpx_client_over_the_pool(mock_url):
    pool = Http1Pool(mock_url, connect_timeout=2, max_connections=4)
    async with httpx.AsyncClient(transport=Http1Transport(pool), base_url=mock_url) as client:
        models = await client.get("/v1/models")
        assert models.status_code == 200 and models.json()["data"]
        head = await client.head("/v1/models")
        assert head.status_code in (200, 404, 405) and head.content == b""
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.json()["choices"]
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ) as r:
            body = b"".join([c async for c in r.aiter_raw()])
        assert body.endswith(b"data: [DONE]\n\n")
        # Connections were reused: at most one connection open, idle in the pool.
        assert len(pool._idle) == 1
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("http://elsewhere.example/v1/models")


@pytest.mark.anyio
async def test_read_timeout_through_httpx(mock_url):
    pool = Http1Pool(mock_url, connect_timeout=2, max_connections=4)
    transport = Http1Transport(pool)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                mock_url + "/v1/chat/completions",
                json={"model": "m", "messages": []},
                headers={"x-mock-latency-ms": "2000"},
            )
    assert pool._idle == type(pool._idle)()


@pytest.mark.anyio
async def test_connect_errors():
    pool = Http1Pool("http://127.0.0.1:9", connect_timeout=1, max_connections=1)
    with pytest.raises(httpx.ConnectError):
        await pool.open("GET", b"/v1/models", [], b"")
    # the slot was given back
    with pytest.raises(httpx.ConnectError):
        await asyncio.wait_for(pool.open("GET", b"/v1/models", [], b""), 2)
