"""Closed-loop HTTP/1.1 load generator: raw asyncio Protocols over keep-alive connections.

One connection per concurrent worker; each sends a prebuilt request, parses just enough of the
response (status line, end of headers, Content-Length or chunked framing up to the ``0\\r\\n\\r\\n``
terminator), records its timing and immediately sends the next request. No HTTP client library is
involved, so the generator costs a few microseconds per request and stays out of the measurement.

Per request it records total latency, time to first body byte (for SSE streams that is the first
event) and whether the response was good: status 200, the full body, and for streams a body that
ends in ``data: [DONE]``.

Used in-process by ``bench/harness.py``; also runnable alone::

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8000/v1/chat/completions -c 16 --stream
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import uvloop

perf = time.perf_counter

_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


def chat_body(stream: bool, size: int = 2048) -> bytes:
    """A chat-completions request body of exactly ``size`` bytes (a 2 KB prompt by default)."""

    def render(filler: str) -> bytes:
        body = {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a concise assistant for the benchmark."},
                {"role": "user", "content": filler},
            ],
            "temperature": 0.2,
            "max_tokens": 256,
            "stream": stream,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    pad = size - len(render(""))
    if pad < 0:
        raise ValueError(f"size {size} is smaller than the empty body")
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * (pad // 50 + 1))[:pad]
    body = render(words)
    assert len(body) == size, len(body)
    return body


def build_request(
    host: str, port: int, path: str, stream: bool, chunks: int = 50, size: int = 2048
) -> bytes:
    body = chat_body(stream, size)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "User-Agent: stillroom-bench",
        "Authorization: Bearer sk-stillroom-bench",
        "Content-Type: application/json",
        "Accept: text/event-stream" if stream else "Accept: application/json",
        f"Content-Length: {len(body)}",
    ]
    if stream:
        lines.append(f"x-mock-chunks: {chunks}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Run:
    """Shared state of one closed-loop run: the measurement window and what it recorded."""

    def __init__(self, request: bytes, stream: bool) -> None:
        self.request = request
        self.stream = stream
        self.measuring = False
        self.stopping = False
        self.latency: list[float] = []
        self.ttfb: list[float] = []
        self.count = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.conns: set[Conn] = set()
        self.inflight = 0
        self.idle: asyncio.Event | None = None
        self.reconnects = 0
        self.primed = 0  # connections that have completed their first response
        self.all_primed: asyncio.Event | None = None
        self.concurrency = 0

    def record(self, t0: float, t_first: float, t_end: float, error: str | None) -> None:
        if not self.measuring:
            return
        if error is not None:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(error)
            return
        self.count += 1
        self.latency.append(t_end - t0)
        self.ttfb.append((t_first or t_end) - t0)


class Conn(asyncio.Protocol):
    def __init__(self, run: Run, reconnect: Callable[[], None]) -> None:
        self.run = run
        self.reconnect = reconnect
        self.transport: Any = None
        self.buf = bytearray()
        self.state = _HEAD
        self.busy = False
        self.t0 = 0.0
        self.t_first = 0.0
        self.status = 0
        self.left = 0  # body bytes (content-length) or chunk data bytes still expected
        self.crlf = 0  # bytes of the CRLF after a chunk's data still expected
        self.close_after = False
        self.tail = b""
        self.first = b""
        self.primed = False

    # -- connection events ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop transports are no asyncio.Transport
        self.run.conns.add(self)
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.conns.discard(self)
        if self.busy:
            self.busy = False
            self.run.inflight -= 1
            self.run.record(self.t0, self.t_first, perf(), f"connection lost mid-response: {exc}")
        self._maybe_idle()
        if not self.run.stopping:
            self.reconnect()

    # -- request/response cycle -------------------------------------------------------------------
    def send(self) -> None:
        run = self.run
        if run.stopping or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return
        self.state = _HEAD
        self.buf.clear()
        self.t_first = 0.0
        self.tail = b""
        self.first = b""
        self.busy = True
        run.inflight += 1
        self.t0 = perf()
        self.transport.write(run.request)

    def finish(self, error: str | None) -> None:
        t_end = perf()
        if error is None and self.status != 200:
            error = f"status {self.status}"
        if error is None and self.run.stream and not self.tail.rstrip().endswith(b"data: [DONE]"):
            error = f"stream did not end with data: [DONE] (tail {self.tail!r})"
        if error is None and not self.run.stream and not self.first.startswith(b"{"):
            error = f"body is not JSON (starts {self.first!r})"
        self.busy = False
        run = self.run
        run.inflight -= 1
        run.record(self.t0, self.t_first, t_end, error)
        if not self.primed:
            self.primed = True
            run.primed += 1
            if run.primed >= run.concurrency and run.all_primed is not None:
                run.all_primed.set()
        if self.close_after or error is not None:
            assert self.transport is not None
            self.transport.close()  # connection_lost reconnects
            return
        if self.run.stopping:
            self._maybe_idle()
            assert self.transport is not None
            self.transport.close()
            return
        self.send()

    def _maybe_idle(self) -> None:
        if self.run.stopping and self.run.inflight == 0 and self.run.idle is not None:
            self.run.idle.set()

    def _data(self, buf: bytes | bytearray, start: int, end: int) -> None:
        """Body bytes buf[start:end] arrived (copies at most 32 of them)."""
        if not self.t_first:
            self.t_first = perf()
            self.first = bytes(buf[start : start + 16])
        self.tail = (self.tail + buf[max(start, end - 32) : end])[-32:]

    def _seen(self, buf: bytes | bytearray, f0: int, d0: int, d1: int) -> None:
        """Chunked body data arrived in this read from buf[f0] on; buf[d0:d1] (d0 = -1: none) is
        the last segment of 32 bytes or more, and nothing came after it."""
        if not self.t_first:
            self.t_first = perf()
            self.first = bytes(buf[f0 : f0 + 16])
        if d0 >= 0:
            self.tail = bytes(buf[d1 - 32 : d1])

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            return  # bytes nobody asked for; the next finish() check catches protocol errors
        # Work on `data` itself unless a partial frame is pending: no copy on the common path.
        buf: bytes | bytearray
        if self.buf:
            self.buf += data
            buf = self.buf
        else:
            buf = data
        pos = 0
        if self.state == _HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if buf is data:
                    self.buf += data
                return
            head = bytes(buf[:end]).lower()
            try:
                self.status = int(head[9:12])
            except ValueError:
                self.finish(f"bad status line {head[:40]!r}")
                return
            self.close_after = b"\r\nconnection: close" in head
            pos = end + 4
            if b"\r\ntransfer-encoding: chunked" in head:
                self.state = _CHUNKED
                self.left = self.crlf = 0
            else:
                i = head.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = head.find(b"\r\n", i + 2)
                    self.left = int(head[i + 17 : j if j >= 0 else None])
                    self.state = _LENGTH
                else:
                    self.state = _UNTIL_CLOSE
                    self.close_after = True
        n = len(buf)
        state = self.state
        if state == _CHUNKED:
            # Hot loop (50+ chunks per stream). The stream's last 32 data bytes are kept for the
            # [DONE] check: a segment of 32 bytes or more supersedes everything before it, so it
            # is only noted (buf[d0:d1]) and copied once per read; shorter ones are appended.
            left, crlf, find = self.left, self.crlf, buf.find
            d0 = d1 = f0 = -1
            while True:
                if left:  # the rest of a chunk's data
                    take = left if left <= n - pos else n - pos
                    if take <= 0:
                        break
                    if f0 < 0:
                        f0 = pos
                    if take >= 32:
                        d0, d1 = pos, pos + take
                    else:
                        if d0 >= 0:
                            self.tail, d0 = bytes(buf[d1 - 32 : d1]), -1
                        self.tail = (self.tail + buf[pos : pos + take])[-32:]
                    pos += take
                    left -= take
                    if left:
                        break
                    crlf = 2
                if crlf:  # the CRLF after a chunk's data
                    take = crlf if crlf <= n - pos else n - pos
                    pos += take
                    crlf -= take
                    if crlf:
                        break
                j = find(b"\r\n", pos)  # chunk-size line
                if j < 0:
                    break
                try:
                    size = int(buf[pos:j], 16)
                except ValueError:
                    try:
                        size = int(bytes(buf[pos:j]).split(b";", 1)[0], 16)  # chunk extension
                    except ValueError:
                        self.finish(f"bad chunk size {bytes(buf[pos:j])[:20]!r}")
                        return
                if size == 0:  # last-chunk, optional trailers, empty line: "0\r\n\r\n"
                    if find(b"\r\n\r\n", j) < 0:
                        break
                    if f0 >= 0:
                        self._seen(buf, f0, d0, d1)
                    self.finish(None)
                    return
                pos = j + 2
                end = pos + size
                if end + 2 <= n and size >= 32:  # the whole chunk is here: the fast path
                    if f0 < 0:
                        f0 = pos
                    d0, d1 = pos, end
                    pos = end + 2
                else:
                    left = size
            if f0 >= 0:
                self._seen(buf, f0, d0, d1)
            self.left, self.crlf = left, crlf
        elif state == _LENGTH:
            take = min(self.left, n - pos)
            if take > 0:
                self._data(buf, pos, pos + take)
                pos += take
                self.left -= take
            if self.left == 0:
                self.finish(None)
                return
        elif state == _UNTIL_CLOSE and n > pos:
            self._data(buf, pos, n)
            pos = n
        # keep the unparsed rest (a partial chunk-size line or terminator) for the next read
        if buf is data:
            if pos < n:
                self.buf += data[pos:]
        elif pos:
            del buf[:pos]

    def eof_received(self) -> bool | None:
        if self.busy and self.state == _UNTIL_CLOSE:
            self.close_after = True
            self.finish(None)
        return None


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[i]


def summarize(values: list[float]) -> dict[str, float]:
    """Milliseconds: p50, p90, p99, max, mean (nearest-rank percentiles)."""
    s = sorted(values)
    ms = 1000.0
    return {
        "p50": _pct(s, 0.50) * ms,
        "p90": _pct(s, 0.90) * ms,
        "p99": _pct(s, 0.99) * ms,
        "max": (s[-1] * ms) if s else float("nan"),
        "mean": (sum(s) / len(s) * ms) if s else float("nan"),
    }


async def run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    stream: bool,
    concurrency: int,
    warmup: float,
    duration: float,
    on_window_start: Callable[[], Any] | None = None,
    on_window_end: Callable[[], Any] | None = None,
    drain_timeout: float = 15.0,
    prime_timeout: float = 30.0,
) -> dict[str, Any]:
    """Run ``concurrency`` closed-loop connections for ``warmup`` + ``duration`` seconds.

    Only responses completed inside the measurement window count. ``on_window_start`` and
    ``on_window_end`` run exactly at the window edges (the harness samples proxy CPU there); their
    return values come back as ``window_start`` / ``window_end``.
    """
    loop = asyncio.get_running_loop()
    run = Run(request, stream)
    run.concurrency = concurrency
    run.all_primed = asyncio.Event()
    pending: set[asyncio.Future[Any]] = set()

    def factory() -> Conn:
        return Conn(run, reconnect)

    def reconnect() -> None:
        run.reconnects += 1
        fut = loop.create_task(loop.create_connection(factory, host, port))
        pending.add(fut)
        fut.add_done_callback(_reconnected)

    def _reconnected(fut: asyncio.Future[Any]) -> None:
        pending.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            run.record(perf(), 0.0, perf(), f"connect failed: {exc!r}")
            if not run.stopping:
                loop.call_later(0.05, reconnect)

    t_connect = perf()
    await asyncio.gather(*(loop.create_connection(factory, host, port) for _ in range(concurrency)))
    # Warm-up starts once every connection has had one answer: a server busy with the first
    # connections can leave the last ones waiting for a second or more before it reads them, which
    # is start-up, not the steady state the window should measure.
    primed = True
    try:
        await asyncio.wait_for(run.all_primed.wait(), prime_timeout)
    except TimeoutError:
        primed = False
    t_primed = perf()
    await asyncio.sleep(warmup)
    run.measuring = True
    t_start = perf()
    start_info = on_window_start() if on_window_start else None
    await asyncio.sleep(duration)
    run.measuring = False
    t_end = perf()
    end_info = on_window_end() if on_window_end else None
    run.stopping = True
    run.idle = asyncio.Event()
    if run.inflight:
        try:
            await asyncio.wait_for(run.idle.wait(), drain_timeout)
        except TimeoutError:
            pass
    for conn in list(run.conns):
        if conn.transport is not None:
            conn.transport.close()
    for fut in list(pending):
        fut.cancel()
    await asyncio.sleep(0)
    elapsed = t_end - t_start
    return {
        "requests": run.count,
        "errors": run.errors,
        "error_samples": run.error_samples,
        "reconnects": run.reconnects,
        "primed": primed,
        "prime_s": t_primed - t_connect,
        "elapsed_s": elapsed,
        "rps": run.count / elapsed if elapsed > 0 else 0.0,
        "latency_ms": summarize(run.latency),
        "ttfb_ms": summarize(run.ttfb),
        "window_start": start_info,
        "window_end": end_info,
    }


def run_cell(host: str, port: int, request: bytes, **kwargs: Any) -> dict[str, Any]:
    """Run one measurement on a fresh uvloop event loop, with the garbage collector paused."""
    gc.collect()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(run_load(host, port, request, **kwargs))
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop HTTP/1.1 load generator")
    parser.add_argument("--url", required=True, help="http://HOST:PORT/PATH")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--stream", action="store_true", help="stream: true and x-mock-chunks")
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--size", type=int, default=2048, help="request body bytes")
    args = parser.parse_args()
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = build_request(host, port, url.path or "/", args.stream, args.chunks, args.size)
    result = run_cell(
        host,
        port,
        request,
        stream=args.stream,
        concurrency=args.concurrency,
        warmup=args.warmup,
        duration=args.duration,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
