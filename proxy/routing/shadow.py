"""``ShadowSender``: after the teacher answered, ask the student too, score the pair, keep it.

It runs in the shadow worker process (``proxy.routing.shadow_process``), fed one ``Shadow``
at a time: the request and the teacher's answer, taken from the capture record built in memory
at the end of the exchange (a streamed answer already reassembled). ``enqueue`` puts it on a
bounded queue (full: not shadowed, and counted); ``keep_pair`` keeps a pair whose student
answer is known already (a route in full mode). Workers take
requests off the queue; per route at most ``max_concurrency`` student requests are in flight,
each bounded by the route's ``timeout_s``. The student's answer is scored with the route's
graders and the pair kept as a ``shadow_pair`` item under the route (``storage.documents``):
capture id, scores, both answers, both latencies. Pairs are written in batches (every
``flush_s`` or ``batch`` pairs), so shadow traffic costs the store one write per batch.
Promotion uses these pairs (``proxy.routing.service``).

The student's request is the teacher's with the student's model name, not streamed, without
the client's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

from proxy.http1 import Http1Pool
from proxy.routing.routes import Route
from proxy.routing.table import KIND
from proxy.tasks import spawn
from storage.base import Store
from storage.errors import StoreError
from storage.models import CaptureRecord

logger = logging.getLogger("stillroom.routing")


class Shadows(Protocol):
    """What the router and the metrics need (``ShadowProcess``)."""

    sent: int
    dropped: int
    failed: int
    in_flight: dict[str, int]
    peak_in_flight: dict[str, int]

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def submit(self, route: Route, request: dict[str, Any], record: CaptureRecord) -> None: ...

    def keep_captured(
        self, route: Route, request: dict[str, Any], teacher: CaptureRecord, student: CaptureRecord
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Shadow:
    """One request to send to the student after the teacher answered it."""

    route: Route
    request: dict[str, Any]
    teacher: dict[str, Any]  # the teacher's answer message
    capture_id: str
    teacher_latency_ms: float | None


class ShadowSender:
    def __init__(
        self,
        store: Store,
        *,
        queue_size: int = 1000,
        workers: int = 16,
        flush_s: float = 0.5,
        batch: int = 200,
    ) -> None:
        self.store = store
        self._queue: asyncio.Queue[Shadow] = asyncio.Queue(queue_size)
        self._flush_s = flush_s
        self._batch = batch
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._pending_count = 0
        self._flushed = asyncio.Event()
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._limits: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._pools: dict[str, Http1Pool] = {}  # student origin -> keep-alive pool
        self.in_flight: dict[str, int] = {}
        self.peak_in_flight: dict[str, int] = {}
        self.dropped = 0
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        self._tasks = [spawn(self._work(), name=f"shadow-{n}") for n in range(self._workers)]
        self._tasks.append(spawn(self._flush_forever(), name="shadow-flush"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush()  # pairs already scored are kept
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()

    def full(self) -> bool:
        return self._queue.full()

    def room(self) -> int:
        """Shadows the queue can take now."""
        return self._queue.maxsize - self._queue.qsize()

    async def idle(self) -> None:
        """Wait until every queued shadow is done (a worker's graceful stop, tests)."""
        await self._queue.join()

    def enqueue(self, shadow: Shadow) -> None:
        try:
            self._queue.put_nowait(shadow)
        except asyncio.QueueFull:
            self.dropped += 1

    def keep_pair(
        self,
        shadow: Shadow,
        student: dict[str, Any],
        student_capture_id: str,
        student_latency_ms: float | None,
    ) -> None:
        self._keep(
            shadow.route.name,
            {
                "type": "shadow_pair",
                "capture_id": shadow.capture_id,
                "student_capture_id": student_capture_id,
                "scores": _score(shadow.route, student, shadow.teacher, shadow.request),
                "error": None,
                "student": student,
                "teacher": shadow.teacher,
                "student_latency_ms": student_latency_ms,
                "teacher_latency_ms": shadow.teacher_latency_ms,
                "at": time.time(),
            },
        )

    async def _flush_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), self._flush_s)
            self._flushed.clear()
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending, self._pending_count = self._pending, {}, 0
        for name, bodies in pending.items():
            try:
                await self.store.add_items(KIND, name, bodies)
            except StoreError as exc:  # shadow pairs are measurements: lost ones are counted
                self.failed += len(bodies)
                logger.warning("route %s: %d shadow pairs not stored: %s", name, len(bodies), exc)

    def _keep(self, name: str, body: dict[str, Any]) -> None:
        self._pending.setdefault(name, []).append(body)
        self._pending_count += 1
        if self._pending_count >= self._batch:
            self._flushed.set()

    async def _work(self) -> None:
        while True:
            shadow = await self._queue.get()
            route = shadow.route
            try:
                cap, limit = self._limits.get(route.name, (0, None))
                if limit is None or cap != route.max_concurrency:
                    limit = asyncio.Semaphore(route.max_concurrency)
                    self._limits[route.name] = (route.max_concurrency, limit)
                async with limit:
                    await self._shadow(shadow)
            except Exception:  # one pair's bug must not stop the workers
                self.failed += 1
                logger.exception("route %s: shadow request failed", route.name)
            finally:
                self._queue.task_done()

    async def _shadow(self, shadow: Shadow) -> None:
        route, request, teacher = shadow.route, shadow.request, shadow.teacher
        name = route.name
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        self.peak_in_flight[name] = max(self.peak_in_flight.get(name, 0), self.in_flight[name])
        started = time.perf_counter()
        try:
            student, error = await self._ask_student(route, request)
        finally:
            self.in_flight[name] -= 1
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.sent += 1
        scores: dict[str, float | None] = {}
        if student is not None:
            if any(config.get("evaluation_metric") == "cosine" for config in route.graders):
                scores = await asyncio.to_thread(_score, route, student, teacher, request)
            else:  # the cheap graders: microseconds, no thread hop
                scores = _score(route, student, teacher, request)
        self._keep(
            name,
            {
                "type": "shadow_pair",
                "capture_id": shadow.capture_id,
                "scores": scores,
                "error": error,
                "student": student,
                "teacher": teacher,
                "student_latency_ms": round(latency_ms, 2),
                "teacher_latency_ms": shadow.teacher_latency_ms,
                "at": time.time(),
            },
        )

    async def _ask_student(
        self, route: Route, request: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The student's answer (not streamed), through the proxy's own HTTP/1.1 pool: a few
        times cheaper per request than an httpx client, which matters at full shadow rate."""
        body = {**request, "model": route.student.model, "stream": False}
        body.pop("stream_options", None)
        headers = [(b"content-type", b"application/json"), (b"accept", b"application/json")]
        if route.student.api_key_env and (key := os.environ.get(route.student.api_key_env)):
            headers.append((b"authorization", f"Bearer {key}".encode("latin-1")))
        parts = urllib.parse.urlsplit(route.student.base_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = Http1Pool(
                origin, connect_timeout=min(route.timeout_s, 5.0), max_connections=256
            )
        target = (parts.path.rstrip("/") + "/chat/completions").encode()
        response = None
        try:
            async with asyncio.timeout(route.timeout_s):
                response = await pool.open("POST", target, headers, orjson.dumps(body))
                content = b"".join([chunk async for chunk in response.chunks()])
            if response.status >= 400:
                return None, f"student answered {response.status}"
            answer = orjson.loads(content)
            return answer["choices"][0]["message"], None
        except TimeoutError:
            return None, "student timeout"
        except (httpx.TransportError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            return None, f"student failed: {type(exc).__name__}"
        finally:
            if response is not None:
                response.close()


def teacher_message(record: CaptureRecord) -> dict[str, Any] | None:
    """The answer message of a completed chat capture (None otherwise)."""
    if record.outcome != "completed" or not isinstance(record.response, dict):
        return None
    try:
        message = record.response["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return None
    return message if isinstance(message, dict) else None


def _score(
    route: Route, student: dict[str, Any], teacher: dict[str, Any], request: dict[str, Any]
) -> dict[str, float | None]:
    from proxy.evals.answer import Answer
    from proxy.evals.graders import parse_grader

    sample, reference = Answer.from_message(student), Answer.from_message(teacher)
    scores: dict[str, float | None] = {}
    for config in route.graders:
        grader = parse_grader(config)
        if grader.needs_judge:
            continue
        scores[grader.name] = grader.grade(sample, reference, request)
    return scores
