"""What a route costs the proxy's core per request, without the machine's noise: the routing
decision (parse the body, match the route, the sticky key and sample) and handing a shadow to
the worker process (encode one line; the pipe write itself is left out), timed in-process.

    .venv/bin/python bench/shadow_cost.py

bench/shadow_overhead.py measures the same end to end, where on a 2-vCPU machine the student,
the mocks and the load generator share one core and their noise is larger than this cost.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import chat_body  # noqa: E402
from proxy.routing.router import Router  # noqa: E402
from proxy.routing.routes import Route, parse_route  # noqa: E402
from proxy.routing.shadow_process import ShadowProcess  # noqa: E402
from tests.conftest import make_capture  # noqa: E402

N = 50_000


class _Table:
    def __init__(self, route: Route) -> None:
        self.routes = {route.name: route}

    def match(self, model: object, tags: Any) -> Route:
        return next(iter(self.routes.values()))

    def record(self, route: Route, fell_back: bool) -> None:
        pass


class _Stdin:
    class transport:  # noqa: N801 (asyncio's attribute name)
        @staticmethod
        def get_write_buffer_size() -> int:
            return 0

    @staticmethod
    def write(data: bytes) -> None:
        pass


class _Worker:
    returncode = None
    stdin = _Stdin


async def main() -> None:
    route = parse_route(
        {
            "name": "bench",
            "model": "gpt-4o-mini",
            "student": {"base_url": "http://127.0.0.1:9/v1", "model": "student"},
            "mode": "shadow",
        }
    )
    body = chat_body(False)
    record = make_capture(request_body=body)
    shadows = ShadowProcess("unused")
    shadows._proc = _Worker()  # type: ignore[assignment]
    router = Router(_Table(route), shadows)  # type: ignore[arg-type]
    decided = router.decide("POST", "/v1/chat/completions", body, {}, "fp")
    assert decided is not None
    started = time.perf_counter()
    for _ in range(N):
        router.decide("POST", "/v1/chat/completions", body, {}, "fp")
    decide_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(N):
        router.shadow(decided[0], decided[1], record)
        shadows._seen = shadows._written  # as if the worker kept up
    shadow_s = time.perf_counter() - started
    print(  # noqa: T201
        f"per request, {len(body)}-byte chat body: decide {decide_s / N * 1e6:.1f} µs, "
        f"hand a shadow to the worker {shadow_s / N * 1e6:.1f} µs"
    )


if __name__ == "__main__":
    asyncio.run(main())
