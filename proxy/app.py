"""``create_app(settings)``: the ASGI application of ``stillroom serve``.

The top level is a tiny dispatcher, not a Starlette router: ``/v1/...`` goes straight to the
``Forwarder`` (the hot path), everything else to a Starlette app (health, metrics, later admin).
Why not mount the forwarder in Starlette: its always-on ServerErrorMiddleware and
ExceptionMiddleware wrap ``send`` for every body chunk of every stream, which measured as a
visible share of proxy CPU (bench/RESULTS.md). The lifespan is still one place: it opens the one
pooled upstream client, the metrics registry, and closes them in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.errors import RouteNotFound
from proxy.forward import Forwarder, RelayConfig
from proxy.metrics import ProxyMetrics
from proxy.settings import Settings
from proxy.transport import AiohttpTransport
from proxy.types import Receive, Scope, Send

logger = logging.getLogger("stillroom.app")


@dataclass(slots=True)
class AppState:
    """What the lifespan owns while the app runs."""

    client: httpx.AsyncClient
    forwarder: Forwarder
    draining: bool = False
    extra: dict[str, object] = field(default_factory=dict)


class StillroomApp:
    """The ASGI callable; ``state`` exists between lifespan startup and shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = ProxyMetrics(self.registry)
        self.state: AppState | None = None
        self._site = Starlette(
            routes=[
                Route("/healthz", self._healthz, methods=["GET", "HEAD"]),
                Route("/readyz", self._readyz, methods=["GET", "HEAD"]),
                Route("/metrics", self._metrics, methods=["GET"]),
            ],
            exception_handlers={404: self._not_found, 405: self._not_found},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/v1/") and self.state is not None:
                await self.state.forwarder(scope, receive, send)
                return
            await self._site(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        # websocket: not served; uvicorn closes the handshake when the app returns

    def start_draining(self) -> None:
        """Called when a stop signal arrives: readiness turns false at once."""
        if self.state is not None:
            self.state.draining = True

    async def startup(self) -> None:
        s = self.settings
        transport = AiohttpTransport(
            connect_timeout=s.connect_timeout,
            read_timeout=max(s.first_byte_timeout, s.idle_timeout) + 1.0,
            max_connections=s.max_connections,
        )
        client = httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)
        relay = RelayConfig(
            upstream=s.upstream,
            upstream_api_key=s.upstream_api_key.reveal() if s.upstream_api_key else None,
            max_request_bytes=s.max_request_bytes,
            first_byte_timeout=s.first_byte_timeout,
            idle_timeout=s.idle_timeout,
        )
        forwarder = Forwarder(relay, transport, self.metrics)
        self.state = AppState(client=client, forwarder=forwarder)
        logger.info("forwarding /v1 to %s", s.upstream)

    async def shutdown(self) -> None:
        state, self.state = self.state, None
        if state is None:
            return
        # uvicorn has already waited out the drain window and cancelled what was left; let the
        # cancelled relays finish their bookkeeping before the client goes away under them.
        await _wait_until(lambda: state.forwarder.active == 0, timeout=5.0)
        await state.client.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            await self.startup()
        except Exception as exc:
            logger.error("startup failed: %s", exc)
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        try:
            await self.shutdown()
        except Exception as exc:
            logger.error("shutdown failed: %s", exc)
            await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        state = self.state
        if state is None or state.draining:
            return JSONResponse({"status": "draining" if state else "starting"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        error = RouteNotFound(f"Invalid URL ({request.method} {request.url.path})")
        return Response(error.to_json(), status_code=404, media_type="application/json")


async def _wait_until(predicate: Callable[[], bool], *, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate() and loop.time() < deadline:
        await asyncio.sleep(0.01)


def create_app(settings: Settings) -> StillroomApp:
    """Build the app; nothing is opened until the lifespan starts."""
    return StillroomApp(settings)
