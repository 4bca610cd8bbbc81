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
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.admin.api import create_admin_app
from proxy.admin.auth import is_admin_path
from proxy.admin.evals import EvalTasks
from proxy.admin.stored_completions import LIST_PATH as STORED_COMPLETIONS_PATH
from proxy.admin.stored_completions import StoredCompletions, match_route
from proxy.capture import (
    SCOPE_CAPTURE,
    SCOPE_PREFIX_ERROR,
    SCOPE_TAGS,
    CaptureDrops,
    CapturePolicy,
    CaptureStats,
)
from proxy.capture_indexer import CaptureIndexer
from proxy.capture_pending import CapturePending
from proxy.errors import InvalidRequest, RouteNotFound
from proxy.forward import Forwarder, RelayConfig
from proxy.http1 import Http1Pool, Http1Transport
from proxy.indexer import IndexerOptions
from proxy.metrics import CaptureMetrics, ProxyMetrics, TrainingMetrics
from proxy.retention import Retention
from proxy.routing.metrics import RoutingMetrics
from proxy.routing.router import Router
from proxy.routing.shadow_process import ShadowProcess
from proxy.routing.table import RouteTable
from proxy.settings import Settings
from proxy.tags import parse_capture_switch, parse_tags, split_prefix
from proxy.training.job_counts import JobCounts
from proxy.training.runner import JobRunner, ProviderConfig
from proxy.types import Receive, Scope, Send
from proxy.writer import CaptureWriter
from storage import spool
from storage.base import NullStore, Store
from storage.connect import open_store
from storage.errors import StoreError
from storage.sqlite import SQLiteStore

logger = logging.getLogger("stillroom.app")

_WRITER_DRAIN_SECONDS = 10.0  # after the request drain: time to write what is still queued


@dataclass(slots=True)
class AppState:
    """What the lifespan owns while the app runs."""

    client: httpx.AsyncClient
    forwarder: Forwarder
    store: Store
    writer: CaptureWriter
    draining: bool = False
    retention: Retention | None = None  # None: captures are kept forever
    stored_completions: StoredCompletions | None = None  # None: forwarded (upstream mode)
    runner: JobRunner | None = None  # None: capture off (no store for jobs)
    job_counts: JobCounts | None = None  # None: capture off (no jobs to count)
    router: Router | None = None  # None: capture off (no store for routes)
    evals: EvalTasks | None = None  # None: capture off (no store to run evals on)
    indexer: CaptureIndexer | None = None  # None: records are built inline (or capture off)
    pending: CapturePending | None = None  # captures handed out but not stored yet


class StillroomApp:
    """The ASGI callable; ``state`` exists between lifespan startup and shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = ProxyMetrics(self.registry)
        self.capture_metrics = CaptureMetrics(self.registry)
        self.training_metrics = TrainingMetrics(self.registry)
        self.state: AppState | None = None
        self._routing_metrics: RoutingMetrics | None = None
        self._site = Starlette(
            routes=[
                Route("/healthz", self._healthz, methods=["GET", "HEAD"]),
                Route("/readyz", self._readyz, methods=["GET", "HEAD"]),
                Route("/metrics", self._metrics, methods=["GET"]),
            ],
            exception_handlers={404: self._not_found, 405: self._not_found},
        )
        # The admin API exists only with a token; without one /admin is an unknown path (404).
        self._admin = (
            create_admin_app(
                settings.admin_token,
                lambda: self.state.store if self.state else None,
                lambda: self.state.runner if self.state else None,
                lambda: self.state.router if self.state else None,
                lambda: self.state.evals if self.state else None,
                lambda: self.state.pending if self.state else None,
            )
            if settings.admin_token is not None
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/t/"):
                scope = _strip_tag_prefix(scope)
                path = scope["path"]
            if path.startswith("/v1/") and self.state is not None:
                stored = self.state.stored_completions
                if (
                    stored is not None
                    and path.startswith(STORED_COMPLETIONS_PATH)
                    and match_route(scope["method"], path) is not None
                ):
                    await stored(scope, receive, send)
                    return
                await self.state.forwarder(scope, receive, send)
                return
            if self._admin is not None and is_admin_path(path):
                await self._admin(scope, receive, send)
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
        store: Store = open_store(s.database) if s.capture else NullStore()
        try:
            if s.migrate_on_start:
                applied = await store.migrate()
                if applied:
                    logger.info("applied migrations: %s", ", ".join(applied))
            elif pending := await store.pending_migrations():
                raise StoreError(f"pending migrations {pending}; run `stillroom db migrate`")
            secret = await store.install_secret()
        except BaseException:
            await store.close()
            raise
        indexer: CaptureIndexer | None = None
        local = store if isinstance(store, SQLiteStore) else None
        if (
            local is not None
            and s.capture
            and (s.capture_index == "deferred" or spool.waiting_bytes(local.path))
        ):
            # Inline indexing still starts one to index what an earlier deferred run spooled.
            indexer = CaptureIndexer(
                IndexerOptions(
                    path=local.path,
                    batch_size=s.batch_size,
                    max_lag_s=s.capture_index_max_lag,
                    max_backlog_bytes=s.capture_index_max_backlog,
                    busy_timeout_s=local.busy_timeout_s,
                    max_bytes=local.max_bytes,
                ),
                spool_end=lambda: local.spool_end,
            )
            try:
                await local.open_spool()  # one proxy per database: a second one stops here
                await indexer.start()
            except BaseException:
                await store.close()
                raise
            local.spool_stored = lambda: indexer.stored_position if indexer else 0
        deferred = local is not None and s.capture_index == "deferred"
        writer = CaptureWriter(
            store,
            max_queue=s.queue_max_records,
            max_queue_bytes=s.queue_max_bytes,
            batch_size=s.batch_size,
            flush_interval=s.flush_interval,
            logger=logging.getLogger("stillroom.writer"),
            on_batch=self.capture_metrics.observe_batch,
            write=local.append_spool if deferred and local is not None else None,
        )
        await writer.start()
        drops = CaptureDrops()
        self.capture_metrics.watch(CaptureStats(writer, drops, indexer))
        policy = CapturePolicy(
            writer,
            max_bytes=s.capture_max_bytes,
            fingerprint_secret=secret,
            drops=drops,
            enabled=s.capture,
            deferred=deferred,
        )
        upstream = urllib.parse.urlsplit(s.upstream)
        pool = Http1Pool(
            f"{upstream.scheme}://{upstream.netloc}",
            connect_timeout=s.connect_timeout,
            max_connections=s.max_connections,
        )
        # The one pooled client: httpx's API over the relay's own connection pool. The relay
        # uses the pool directly; first-byte and idle deadlines are enforced per exchange.
        client = httpx.AsyncClient(
            transport=Http1Transport(pool),
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=s.connect_timeout,
                read=max(s.first_byte_timeout, s.idle_timeout),
                write=s.idle_timeout,
                pool=s.connect_timeout,
            ),
        )
        relay = RelayConfig(
            upstream_path=upstream.path,
            upstream_api_key=s.upstream_api_key.reveal() if s.upstream_api_key else None,
            max_request_bytes=s.max_request_bytes,
            max_buffered_bytes=s.max_buffered_bytes,
            first_byte_timeout=s.first_byte_timeout,
            idle_timeout=s.idle_timeout,
        )
        router = await self._router(store) if s.capture else None
        forwarder = Forwarder(relay, pool, self.metrics, policy, router)
        on_the_way = CapturePending(writer, indexer)
        self.state = AppState(
            client=client,
            forwarder=forwarder,
            store=store,
            writer=writer,
            router=router,
            indexer=indexer,
            pending=on_the_way,
        )
        if s.stored_completions == "local":
            self.state.stored_completions = StoredCompletions(
                store,
                fingerprint_secret=secret,
                admin_token=s.admin_token.reveal() if s.admin_token else None,
                pending=on_the_way,
            )
        if s.retention_days is not None:
            self.state.retention = Retention(store, days=s.retention_days)
            self.state.retention.start()
        if s.capture:
            # Training jobs are polled here; the work itself runs at the provider or, for the
            # local backend, in a training process of its own.
            provider = ProviderConfig(
                s.train_base_url,
                s.train_api_key.reveal() if s.train_api_key else None,
                models_dir=s.models_dir,
            )
            self.state.runner = JobRunner(store, provider, poll_interval=s.train_poll_interval)
            self.state.runner.start()
            self.state.job_counts = JobCounts(store, interval=s.metrics_refresh)
            await self.state.job_counts.start()
            self.training_metrics.watch(self.state.job_counts)
            self.state.evals = EvalTasks(store)  # runs the evals POST /admin/evals starts
        logger.info("forwarding /v1 to %s; capture %s", s.upstream, "on" if s.capture else "off")

    async def _router(self, store: Store) -> Router:
        """The routes, read now and kept in step with the store; shadow traffic's workers."""
        table = RouteTable(store, refresh=self.settings.routes_refresh)
        await table.start()
        shadow = ShadowProcess(self.settings.database)  # shadow work off the proxy's core
        shadow.start()
        router = Router(table, shadow)
        if self._routing_metrics is None:
            self._routing_metrics = RoutingMetrics(self.registry, router)
        else:
            self._routing_metrics.router = router
        return router

    async def shutdown(self) -> None:
        state, self.state = self.state, None
        if state is None:
            return
        # uvicorn has already waited out the drain window and cancelled what was left; let the
        # cancelled relays finish their bookkeeping (their captures are queued in `finally`)
        # before the writer drains and the client goes away under them.
        if state.retention is not None:
            await state.retention.stop()
        if state.runner is not None:
            await state.runner.stop()
        if state.job_counts is not None:
            await state.job_counts.stop()
        if state.evals is not None:
            await state.evals.stop()  # cancelled: their documents say "interrupted"
        await _wait_until(lambda: state.forwarder.active == 0, timeout=5.0)
        if state.router is not None:
            await state.router.stop()
        await state.writer.stop(deadline_s=_WRITER_DRAIN_SECONDS)
        lost = state.writer.dropped_total.get("shutdown", 0)
        if lost:
            logger.error("%d captures could not be written before the drain deadline", lost)
        if state.indexer is not None:
            left = await state.indexer.stop(deadline_s=_WRITER_DRAIN_SECONDS)
            if not left and isinstance(state.store, SQLiteStore):
                try:
                    await state.store.erase_spool()  # all stored: no copy of them stays behind
                except OSError as exc:  # the captures are safe; only the copies stay
                    logger.warning("could not erase the capture spool: %s", exc)
            if left:
                logger.warning(
                    "%d bytes of captures wait in the spool; they are indexed after the next start",
                    left,
                )
        await state.store.close()
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
        try:
            await state.store.ping()
            pending = await state.store.pending_migrations()
        except StoreError as exc:
            return JSONResponse({"status": "store_unavailable", "error": str(exc)}, 503)
        if pending:
            return JSONResponse({"status": "migrations_pending", "pending": pending}, 503)
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


def _strip_tag_prefix(scope: Scope) -> Scope:
    """``/t/task=x,team=y/v1/...`` → ``/v1/...`` with the tags (or capture=off) on the scope.

    A malformed prefix is left alone: the path then matches nothing and answers 404, unless
    its tags are invalid, which the forwarder reports as 400 (see ``capture.SCOPE_TAGS``).
    """
    split = split_prefix(scope["path"])
    if split is None:
        return scope
    raw_tags, path = split
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    cut = raw_path.find(b"/v1/")
    scope = dict(scope)
    scope["path"], scope["raw_path"] = path, raw_path[cut:]
    try:
        tags = parse_tags(raw_tags, "the /t/ base-URL prefix")
    except InvalidRequest as exc:
        scope[SCOPE_PREFIX_ERROR] = exc
        return scope
    switch = tags.pop("capture", None)
    if switch is not None:
        try:
            scope[SCOPE_CAPTURE] = parse_capture_switch(switch, "capture= in the /t/ prefix")
        except InvalidRequest as exc:
            scope[SCOPE_PREFIX_ERROR] = exc
    scope[SCOPE_TAGS] = tags
    return scope


def create_app(settings: Settings) -> StillroomApp:
    """Build the app; nothing is opened until the lifespan starts."""
    return StillroomApp(settings)
