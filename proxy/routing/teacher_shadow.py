"""The teacher asked on the side: a route in ``full`` mode keeps sending a sampled share of the
requests its student answered to the teacher too, to keep measuring the student and to keep
collecting the teacher's answers as training data.

``ask_teacher`` relays one such request to the upstream through the proxy's own connection
pool, with nobody waiting for the answer: it goes only to the capture tee (recorded as the
teacher's, with the route decision ``teacher_shadow``), then ``done(record)`` is called with the
capture record (None when nothing was captured) so the router can score the pair. The whole
exchange is bounded by ``timeout``; a shutdown cancels it (recorded as interrupted).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from proxy.errors import ProxyError
from storage.models import CaptureRecord, Outcome


class _Tee(Protocol):
    def on_response_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def on_chunk(self, chunk: bytes) -> None: ...

    def on_end(self, outcome: Outcome, error: str | None, ttfb: float | None) -> None: ...


async def ask_teacher(
    pool: Any,
    request: tuple[str, bytes, list[tuple[bytes, bytes]], bytes],
    tee: _Tee | None,
    *,
    timeout: float,
    done: Callable[[CaptureRecord | None], None],
) -> None:
    started = time.perf_counter()
    response: Any = None
    outcome: Outcome = "completed"
    error: str | None = None
    ttfb: float | None = None
    try:
        async with asyncio.timeout(timeout):
            response = await pool.open(*request)
            if tee is not None:
                tee.on_response_start(response.status, list(response.headers))
            async for chunk in response.chunks():
                ttfb = ttfb if ttfb is not None else time.perf_counter() - started
                if tee is not None:
                    tee.on_chunk(chunk)
        if response.status >= 400:
            outcome, error = "upstream_error", f"upstream answered {response.status}"
    except asyncio.CancelledError:
        outcome, error = "interrupted", "proxy shutting down"
        raise
    except (TimeoutError, httpx.TransportError, ProxyError, OSError) as exc:
        outcome, error = "upstream_error", f"teacher shadow failed: {type(exc).__name__}"
    finally:
        if response is not None:
            response.close()
        if tee is not None:
            tee.on_end(outcome, error, ttfb)
        done(getattr(tee, "record", None))
