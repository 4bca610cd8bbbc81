"""reliability.md T1-T7, T9-T11 and T21, scaled to run in seconds (the `slow` marker runs the
full counts). Real servers on loopback; the mock upstream scripts the faults."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import statistics
import threading
import time
import uuid

import httpx
import pytest

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
STREAM = {**CHAT, "stream": True}


def mock_log(mock_url: str) -> list[dict]:
    return httpx.get(mock_url + "/_mock/requests").json()


def find(mock_url: str, test_id: str) -> list[dict]:
    return [r for r in mock_log(mock_url) if ["x-test-id", test_id] in r["headers"]]


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def raw_request(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head + body)
    return sock


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def post_head(path: str, body_len: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_len}\r\n{extra}\r\n"
    ).encode()


# -- T1: SSE fidelity, no buffering -------------------------------------------------------------


@pytest.mark.anyio
async def test_t1_stream_events_arrive_as_sent(proxy_url, mock_url):
    headers = {"x-mock-gap-ms": "50", "x-mock-chunks": "8"}

    async def one(client: httpx.AsyncClient, base: str) -> tuple[bytes, list[float]]:
        arrivals: list[float] = []
        body = b""
        async with client.stream(
            "POST", base + "/v1/chat/completions", json=STREAM, headers=headers
        ) as r:
            assert base == mock_url or r.headers["x-accel-buffering"] == "no"
            async for chunk in r.aiter_raw():
                arrivals.append(time.monotonic())
                body += chunk
        return body, arrivals

    async with httpx.AsyncClient(timeout=30) as client:
        direct, _ = await one(client, mock_url)
        runs = await asyncio.gather(*(one(client, proxy_url) for _ in range(20)))
    gaps = []
    for body, arrivals in runs:
        assert hashlib.sha256(body).digest() == hashlib.sha256(direct).digest()
        gaps += [b - a for a, b in zip(arrivals, arrivals[1:], strict=False) if b - a > 0.02]
    # Events are relayed one by one, 50 ms apart, not bunched at the end.
    assert len(gaps) >= 20 * 6
    assert 0.040 <= statistics.median(gaps) <= 0.060


# -- T2: client disconnect cancels the upstream request within a second ------------------------


@pytest.mark.parametrize(
    "variant", ["mid_stream", "silent_first_byte", "non_stream_waiting", "waiting_for_headers"]
)
def test_t2_client_disconnect_reaches_upstream_within_a_second(proxy_url, mock_url, variant):
    test_id = uuid.uuid4().hex
    body = STREAM if variant in ("mid_stream", "silent_first_byte") else CHAT
    extra = {
        "mid_stream": "x-mock-gap-ms: 200\r\nx-mock-chunks: 100\r\n",
        "silent_first_byte": "x-mock-first-byte-ms: 20000\r\n",
        "non_stream_waiting": "x-mock-latency-ms: 20000\r\n",
        "waiting_for_headers": "x-mock-latency-ms: 20000\r\n",
    }[variant]
    payload = httpx.Request("POST", "http://x", json=body).read()
    head = post_head("/v1/chat/completions", len(payload), f"x-test-id: {test_id}\r\n{extra}")
    sock = raw_request(port_of(proxy_url), head, payload)
    if variant == "mid_stream":
        received = b""
        while received.count(b"data:") < 5:
            received += sock.recv(65536)
    else:
        wait_for(lambda: find(mock_url, test_id))
    closed_at = time.time()
    sock.close()
    record = wait_for(lambda: [r for r in find(mock_url, test_id) if r["disconnected_at"]])[0]
    assert record["disconnected_at"] - closed_at <= 1.0
    assert len(find(mock_url, test_id)) == 1


# -- T3: upstream unreachable ---------------------------------------------------------------------


def test_t3_unreachable_upstream_is_a_502_envelope(start_proxy):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    with start_proxy(upstream=f"http://127.0.0.1:{dead}", connect_timeout=2) as base:
        started = time.monotonic()
        r = httpx.post(base + "/v1/chat/completions", json=CHAT)
        elapsed = time.monotonic() - started
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unavailable"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert elapsed < 2.1


# -- T4: upstream reset mid-stream ---


def test_t4_broken_upstream_stream_is_not_made_whole(proxy_url, mock_url):
    test_id = uuid.uuid4().hex
    body = b""
    with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012 - the read is what fails
        with httpx.stream(
            "POST",
            proxy_url + "/v1/chat/completions",
            json=STREAM,
            headers={"x-mock-cut-after": "10", "x-mock-chunks": "40", "x-test-id": test_id},
        ) as r:
            for chunk in r.iter_raw():
                body += chunk
    assert body.count(b"data:") == 10
    assert b"[DONE]" not in body
    assert len(find(mock_url, test_id)) == 1


# -- T5: slow upstream and idle timeouts ----------------------------------------------------------


def test_t5_slow_but_alive_upstreams_are_not_cut(start_proxy, mock_url):
    with start_proxy(upstream=mock_url, first_byte_timeout=2, idle_timeout=0.6) as base:
        slow_start = httpx.post(
            base + "/v1/chat/completions",
            json=STREAM,
            headers={"x-mock-first-byte-ms": "1200", "x-mock-chunks": "3"},
            timeout=10,
        )
        drip = httpx.post(
            base + "/v1/chat/completions",
            json=CHAT,
            headers={"x-mock-mode": "drip:64:150"},
            timeout=30,
        )
    assert slow_start.status_code == 200 and b"[DONE]" in slow_start.content
    assert drip.status_code == 200 and drip.json()["choices"]


def test_t5_idle_upstream_is_cut_after_the_idle_timeout(start_proxy, mock_url):
    with start_proxy(upstream=mock_url, first_byte_timeout=5, idle_timeout=0.5) as base:
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(
                base + "/v1/chat/completions",
                json=CHAT,
                headers={"x-mock-mode": "drip:64:1500"},
                timeout=10,
            )
        assert time.monotonic() - started <= 0.5 + 1.5 + 1.0


def test_t5_first_byte_timeout_before_headers_is_a_504(start_proxy, mock_url):
    with start_proxy(upstream=mock_url, first_byte_timeout=0.5) as base:
        started = time.monotonic()
        r = httpx.post(
            base + "/v1/chat/completions", json=CHAT, headers={"x-mock-latency-ms": "5000"}
        )
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 1.5


# -- T6: a POST is never retried ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["status:500", "status:502", "status:503", "close_after_body"])
async def test_t6_no_post_is_ever_retried(proxy_url, mock_url, fault):
    test_id = uuid.uuid4().hex
    headers = {"x-test-id": test_id}
    if fault.startswith("status:"):
        headers["x-mock-status"] = fault.split(":")[1]
    else:
        headers["x-mock-mode"] = fault
    count = 100
    async with httpx.AsyncClient(timeout=30) as client:
        direct = (
            await client.post(mock_url + "/v1/chat/completions", json=CHAT, headers=headers)
            if fault != "close_after_body"
            else None
        )
        results = await asyncio.gather(
            *(
                client.post(proxy_url + "/v1/chat/completions", json=CHAT, headers=headers)
                for _ in range(count)
            )
        )
    expected_hits = count + (1 if direct is not None else 0)
    assert len(find(mock_url, test_id)) == expected_hits
    for r in results:
        if direct is not None:
            assert (r.status_code, r.content) == (direct.status_code, direct.content)
        else:
            assert r.status_code == 502
            assert r.json()["error"]["code"] == "upstream_protocol_error"


# -- T7: odd upstream bodies pass through unchanged ----------------------------------------------


@pytest.mark.parametrize("mode", ["invalid_json", "html_502", "empty", "binary", "gzip"])
def test_t7_odd_bodies_reach_the_client_unchanged(proxy_url, mock_url, mode):
    headers = {"x-mock-mode": mode, "accept-encoding": "gzip"}
    with httpx.Client() as client:
        with client.stream(
            "POST", mock_url + "/v1/chat/completions", json=CHAT, headers=headers
        ) as d:
            direct = (d.status_code, d.headers.get("content-encoding"), b"".join(d.iter_raw()))
        with client.stream(
            "POST", proxy_url + "/v1/chat/completions", json=CHAT, headers=headers
        ) as p:
            raw = b"".join(p.iter_raw())
            proxied = (p.status_code, p.headers.get("content-encoding"), raw)
    assert proxied[0] == direct[0]
    assert proxied[1] == direct[1]
    assert hashlib.sha256(proxied[2]).digest() == hashlib.sha256(direct[2]).digest()
    if mode == "gzip":
        assert proxied[1] == "gzip"
        assert gzip.decompress(proxied[2]).startswith(b"{")


# -- T9: request body cap ---

CAP = 256 * 1024


def test_t9_declared_oversize_body_is_refused_before_reading_it(start_proxy, mock_url):
    test_id = uuid.uuid4().hex
    with start_proxy(upstream=mock_url, max_request_bytes=CAP) as base:
        head = post_head("/v1/chat/completions", 64 * 1024 * 1024, f"x-test-id: {test_id}\r\n")
        started = time.monotonic()
        sock = raw_request(port_of(base), head)  # no body sent at all
        reply = sock.recv(65536)
        elapsed = time.monotonic() - started
        while not reply.endswith(b"}"):
            reply += sock.recv(65536)
        sock.close()
    assert reply.startswith(b"HTTP/1.1 413")
    assert b'"code":"request_too_large"' in reply
    assert elapsed < 0.25
    assert find(mock_url, test_id) == []


def test_t9_chunked_oversize_body_is_cut_at_the_cap(start_proxy, mock_url):
    test_id = uuid.uuid4().hex

    def body():
        for _ in range(64):
            yield b"x" * 16384

    with start_proxy(upstream=mock_url, max_request_bytes=CAP) as base:
        try:
            r = httpx.post(
                base + "/v1/chat/completions", content=body(), headers={"x-test-id": test_id}
            )
            assert r.status_code == 413
        except httpx.WriteError:
            pass  # the proxy may close before the client finished writing; nothing went upstream
        ok = httpx.post(base + "/v1/chat/completions", json=CHAT)
    assert ok.status_code == 200
    assert find(mock_url, test_id) == []


def test_t9_lying_content_length_forwards_only_declared_bytes(start_proxy, mock_url):
    test_id = uuid.uuid4().hex
    payload = b'{"model":"m"}'
    with start_proxy(upstream=mock_url, max_request_bytes=CAP) as base:
        head = post_head("/v1/chat/completions", len(payload), f"x-test-id: {test_id}\r\n")
        sock = raw_request(port_of(base), head, payload + b"x" * (2 * CAP))
        sock.settimeout(5)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        sock.close()
    # The declared length frames the request; the rest is a malformed next request (400, and
    # the connection closes, which may cancel the first one). Never more than declared goes up.
    hits = find(mock_url, test_id)
    assert len(hits) <= 1 and all(h["body_len"] == len(payload) for h in hits)
    assert received.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400"))


# -- T11: header hygiene ------------------------------------------------------------------------


def test_t11_hop_by_hop_headers_never_cross(proxy_url, mock_url):
    auth = "Bearer sk-hygiene-ABCdef123"
    headers = {
        "host": "evil.example",
        "connection": "keep-alive, X-Foo",
        "x-foo": "1",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "trailer": "X-Bar",
        "upgrade": "h2c",
        "proxy-authorization": "Basic Zm9vOmJhcg==",
        "x-forwarded-for": "10.0.0.1",
        "x-stillroom-tags": "a=b",
        "authorization": auth,
        "x-mock-mode": "echo",
    }
    echoed = httpx.post(proxy_url + "/v1/chat/completions", json=CHAT, headers=headers).json()
    names = [name.lower() for name, _ in echoed["headers"]]
    for banned in (
        "x-foo", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization",
        "x-stillroom-tags", "connection",
    ):  # fmt: skip
        assert banned not in names
    assert dict(echoed["headers"])["host"] == f"127.0.0.1:{port_of(mock_url)}"
    assert ["authorization", auth] in echoed["headers"]
    assert names.count("content-length") == 1 and "transfer-encoding" not in names
    assert ["x-forwarded-for", "10.0.0.1"] in echoed["headers"]  # end-to-end, passed as is


def test_t11_both_framing_headers_are_refused(proxy_url, mock_url):
    test_id = uuid.uuid4().hex
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        f"Transfer-Encoding: chunked\r\nx-test-id: {test_id}\r\n\r\n0\r\n\r\n"
    ).encode()
    sock = raw_request(port_of(proxy_url), head)
    reply = sock.recv(65536)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400")
    assert find(mock_url, test_id) == []


async def hop_by_hop_upstream(scope, receive, send):
    """An upstream that answers with hop-by-hop fields, one of them named in Connection."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"keep-alive", b"timeout=5"),
                (b"connection", b"x-hop"),
                (b"x-hop", b"1"),
                (b"upgrade", b"h2c"),
                (b"proxy-authenticate", b"Basic"),
                (b"x-request-id", b"req_hop"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


def test_t11_upstream_hop_by_hop_headers_are_dropped(start_proxy):
    from tests._server import serve_in_thread

    with serve_in_thread(hop_by_hop_upstream) as upstream:
        direct = httpx.post(upstream + "/v1/chat/completions", json=CHAT)
        with start_proxy(upstream=upstream) as base:
            r = httpx.post(base + "/v1/chat/completions", json=CHAT)
    assert "keep-alive" in direct.headers and "x-hop" in direct.headers  # the upstream sent them
    for name in ("keep-alive", "x-hop", "upgrade", "proxy-authenticate"):
        assert name not in r.headers
    assert r.headers["x-request-id"] == "req_hop"
    assert r.json() == {"ok": True}


# -- T21: no open relay ---------------------------------------------------------------------------


class Canary:
    """A listener that must never see a connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_t21_clients_cannot_choose_where_requests_go(proxy_url, mock_url):
    canary = Canary()
    target = f"127.0.0.1:{canary.port}"
    try:
        with httpx.Client(follow_redirects=False) as client:
            r = client.post(
                proxy_url + "/v1/chat/completions",
                json={**CHAT, "api_base": f"http://{target}", "base_url": f"http://{target}"},
                headers={"x-upstream": target, "x-forwarded-host": target, "host": target},
            )
            assert r.status_code == 200
            redirect = client.post(
                proxy_url + "/v1/chat/completions",
                json=CHAT,
                headers={"x-mock-mode": f"redirect:http://{target}/v1/chat/completions"},
            )
            assert redirect.status_code == 307
            assert redirect.headers["location"] == f"http://{target}/v1/chat/completions"
            assert client.post(proxy_url + "/v1/../admin", json=CHAT).status_code == 404
            assert client.get(proxy_url + "/v1/models/../../admin").status_code == 404
            assert client.get(proxy_url + "//evil/v1/models").status_code == 404
        # absolute-form request target: the authority is ignored, the upstream is fixed.
        payload = httpx.Request("POST", "http://x", json=CHAT).read()
        head = (
            f"POST http://{target}/v1/chat/completions HTTP/1.1\r\nHost: {target}\r\n"
            f"Content-Length: {len(payload)}\r\nContent-Type: application/json\r\n\r\n"
        ).encode()
        sock = raw_request(port_of(proxy_url), head, payload)
        reply = sock.recv(65536)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 200")
    finally:
        canary.close()
    assert canary.hits == 0


# -- T10: a slow client back-pressures the upstream, without memory growth ------------------------


def test_t10_slow_client_is_back_pressured(mock_url, tmp_path):
    import os
    import subprocess
    import sys

    import psutil

    from tests.test_cli import free_port, wait_http

    port = free_port()
    env = {
        **os.environ,
        "STILLROOM_UPSTREAM": mock_url,
        "STILLROOM_DATABASE": str(tmp_path / "t10.db"),
        "STILLROOM_CAPTURE_MAX_BYTES": str(1024 * 1024),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    other = httpx.Client(base_url=base)  # one client: its own set-up is not in the latencies

    def others_for(seconds: float, sock: socket.socket | None = None) -> tuple[float, int]:
        """Another client's p99 latency while ``sock`` (if any) reads 1 KiB per request."""
        latencies, received = [], 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if sock is not None:
                received += len(sock.recv(1024))
            started = time.monotonic()
            assert other.post("/v1/chat/completions", json=CHAT).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.01)
        return sorted(latencies)[int(len(latencies) * 0.99) - 1], received

    try:
        wait_http(base + "/healthz")
        for _ in range(20):  # warm up: pools, imports, allocator
            other.post("/v1/chat/completions", json=CHAT)
        p99_before, _ = others_for(2.0)
        rss_before = psutil.Process(proc.pid).memory_info().rss
        payload = httpx.Request("POST", "http://x", json=STREAM).read()
        head = post_head("/v1/chat/completions", len(payload), "x-mock-mode: huge:20\r\n")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect(("127.0.0.1", port))
        sock.sendall(head + payload)
        p99_during, received = others_for(3.0, sock)
        rss_after = psutil.Process(proc.pid).memory_info().rss
        sock.close()
    finally:
        other.close()
        proc.terminate()
        proc.wait(20)
    assert received < 2 * 1024 * 1024  # the client really was slow
    assert rss_after - rss_before <= 8 * 1024 * 1024, (rss_before, rss_after)
    # reliability.md T10: the other clients' p99 changes by at most 20 ms
    assert p99_during - p99_before <= 0.020, (p99_before, p99_during)


# -- full counts of T2 and T6 (nightly: pytest -m slow) -------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "variant", ["mid_stream", "silent_first_byte", "non_stream_waiting", "waiting_for_headers"]
)
def test_t2_fifty_runs(proxy_url, mock_url, variant):
    for _ in range(50):
        test_t2_client_disconnect_reaches_upstream_within_a_second(proxy_url, mock_url, variant)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["status:500", "status:502", "status:503", "close_after_body"])
async def test_t6_thousand_requests(proxy_url, mock_url, fault):
    for _ in range(10):
        await test_t6_no_post_is_ever_retried(proxy_url, mock_url, fault)


def test_t9_global_body_budget_answers_503_instead_of_growing(start_proxy, mock_url):
    with start_proxy(
        upstream=mock_url, max_request_bytes=CAP, max_buffered_bytes=CAP + CAP // 4
    ) as base:
        port = port_of(base)
        # A slow upload that declared 200 KiB holds its share of the budget while it trickles.
        slow = raw_request(port, post_head("/v1/chat/completions", 200 * 1024), b"x" * 1024)
        payload = b'{"model":"m","messages":[],"pad":"' + b"y" * (200 * 1024 - 40) + b'"}'

        def busy():
            r = httpx.post(base + "/v1/chat/completions", content=payload)
            return r if r.status_code == 503 else None

        refused = wait_for(busy)
        assert refused.json()["error"]["code"] == "proxy_busy"
        slow.close()  # the slow client gives up: its share is released
        ok = wait_for(
            lambda: (
                httpx.post(
                    base + "/v1/chat/completions", content=payload, headers={"x-mock-mode": "echo"}
                ).status_code
                == 200
            )
        )
        assert ok
        metrics = httpx.get(base + "/metrics").text
    assert 'stillroom_proxy_errors_total{code="proxy_busy"}' in metrics


def abort_many(count: int, mock_url: str, tmp_path) -> tuple[int, int]:
    """``count`` clients that leave mid-stream or while waiting; the proxy's open FDs before
    and after (a leaked upstream socket or task would hold one)."""
    import os
    import subprocess
    import sys

    import psutil

    from tests.test_cli import free_port, wait_http

    port = free_port()
    env = {
        **os.environ,
        "STILLROOM_UPSTREAM": mock_url,
        "STILLROOM_DATABASE": str(tmp_path / "a.db"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT)
        process = psutil.Process(proc.pid)
        before = process.num_fds()
        payload = httpx.Request("POST", "http://x", json=STREAM).read()
        for i in range(count):
            # Both would keep an upstream socket for a minute if the abort did not cancel it.
            extra = (
                "x-mock-gap-ms: 50\r\nx-mock-chunks: 1200\r\n"
                if i % 2
                else "x-mock-first-byte-ms: 60000\r\n"
            )
            sock = raw_request(
                port, post_head("/v1/chat/completions", len(payload), extra), payload
            )
            if i % 2:
                sock.recv(1024)
            sock.close()
        # Every abandoned exchange ends within a second or so; then the FDs are back.
        deadline = time.monotonic() + 10
        after = process.num_fds()
        while after > before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            after = process.num_fds()
        return before, after
    finally:
        proc.terminate()
        proc.wait(20)


def test_t2_aborts_leave_no_sockets_behind(mock_url, tmp_path):
    before, after = abort_many(50, mock_url, tmp_path)
    assert after <= before + 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_t2_five_hundred_aborts_leave_no_sockets_behind(mock_url, tmp_path):
    before, after = abort_many(500, mock_url, tmp_path)
    assert after <= before + 2
