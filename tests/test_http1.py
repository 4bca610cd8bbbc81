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


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to test the TLS path")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.anyio
async def test_https_upstream(tls_files):
    import ssl

    from proxy.mock import MockOptions, create_mock_app
    from tests._server import serve_in_thread

    cert, key = tls_files
    trusting = ssl.create_default_context(cafile=str(cert))
    with serve_in_thread(
        create_mock_app(MockOptions()),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    ) as url:
        origin = url.replace("http://", "https://")
        pool = Http1Pool(origin, connect_timeout=2, max_connections=2, ssl_context=trusting)
        body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'
        for _ in range(2):  # the second one reuses the TLS connection
            response = await pool.open("POST", b"/v1/chat/completions", [], body)
            data = b"".join([c async for c in response.chunks()])
            response.close()
            assert response.status == 200 and data.endswith(b"data: [DONE]\n\n")
        assert len(pool._idle) == 1
        await pool.aclose()


@pytest.mark.anyio
async def test_untrusted_certificate_is_refused(tls_files):
    import socket
    import ssl
    import threading

    cert, key = tls_files
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(cert), str(key))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept_once() -> None:
        conn, _ = listener.accept()
        with conn:
            try:
                server_context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate, as it should

    thread = threading.Thread(target=accept_once)
    thread.start()
    try:
        pool = Http1Pool(f"https://127.0.0.1:{port}", connect_timeout=2, max_connections=1)
        with pytest.raises(httpx.ConnectError, match="TLS"):
            await pool.open("GET", b"/v1/models", [], b"")
    finally:
        thread.join(5)
        listener.close()


@pytest.mark.anyio
async def test_pieces_that_arrive_together_go_on_together():
    """Chunked pieces received in one read come out as one chunk (one send for the relay);
    a piece that arrives later is handed over on its own, as soon as it arrives."""
    later = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        events = [f"data: {n}\n\n".encode() for n in range(3)]
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        head += b"transfer-encoding: chunked\r\n\r\n"
        writer.write(head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events))
        await writer.drain()
        await later.wait()
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(b"data: 3\n\n"), b"data: 3\n\n"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Http1Pool(f"http://127.0.0.1:{port}", connect_timeout=2, max_connections=1)
    try:
        response = await pool.open("POST", b"/v1/chat/completions", [], b"{}")
        pieces = response.chunks()
        await asyncio.sleep(0.1)  # all three events are in by now
        assert await anext(pieces) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        later.set()
        assert [piece async for piece in pieces] == [b"data: 3\n\n"]
        response.close()
    finally:
        server.close()
