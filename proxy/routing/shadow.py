"""``ShadowSender``: after the teacher answered, ask the student too, score the pair, keep it.

Never in the client's way: ``submit`` only puts the request on a bounded queue (full: the
request is not shadowed, and counted) and returns. Workers take requests off the queue; per
route at most ``max_concurrency`` student requests are in flight, each bounded by the route's
``timeout_s``. The teacher's answer is read back from the store once the writer has stored the
capture (so streamed answers are compared in their reassembled form), the student's answer is
scored with the route's graders, and the pair is kept as a ``shadow_pair`` item under the
route (``storage.documents``): capture id, scores, both answers, both latencies. Promotion uses
these pairs (``proxy.routing.admin``).

The student's request is the teacher's with the student's model name, not streamed, without
the client's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import httpx
import orjson

from proxy.routing.routes import Route
from proxy.routing.table import KIND
from proxy.tasks import spawn
from storage.base import Store

logger = logging.getLogger("stillroom.routing")

_CAPTURE_WAIT_S = 10.0


class ShadowSender:
    def __init__(self, store: Store, *, queue_size: int = 1000, workers: int = 16) -> None:
        self.store = store
        self._queue: asyncio.Queue[tuple[Route, dict[str, Any], str]] = asyncio.Queue(queue_size)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._limits: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._client: httpx.AsyncClient | None = None
        self.in_flight: dict[str, int] = {}
        self.peak_in_flight: dict[str, int] = {}
        self.dropped = 0
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self._tasks = [spawn(self._work(), name=f"shadow-{n}") for n in range(self._workers)]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def submit(self, route: Route, request: dict[str, Any], capture_id: str) -> None:
        try:
            self._queue.put_nowait((route, request, capture_id))
        except asyncio.QueueFull:
            self.dropped += 1

    async def idle(self) -> None:
        """Wait until every queued shadow request is done (tests, graceful stop)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            route, request, capture_id = await self._queue.get()
            try:
                cap, limit = self._limits.get(route.name, (0, None))
                if limit is None or cap != route.max_concurrency:
                    limit = asyncio.Semaphore(route.max_concurrency)
                    self._limits[route.name] = (route.max_concurrency, limit)
                async with limit:
                    await self._shadow(route, request, capture_id)
            except Exception:  # one pair's bug must not stop the workers
                self.failed += 1
                logger.exception("route %s: shadow request failed", route.name)
            finally:
                self._queue.task_done()

    async def _shadow(self, route: Route, request: dict[str, Any], capture_id: str) -> None:
        teacher = await self._teacher_answer(capture_id)
        if teacher is None:
            return
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
        message, teacher_latency = teacher
        scores: dict[str, float | None] = {}
        if student is not None:
            scores = await asyncio.to_thread(_score, route, student, message, request)
        body = {
            "type": "shadow_pair",
            "capture_id": capture_id,
            "scores": scores,
            "error": error,
            "student": student,
            "teacher": message,
            "student_latency_ms": round(latency_ms, 2),
            "teacher_latency_ms": teacher_latency,
            "at": time.time(),
        }
        await self.store.add_items(KIND, name, [body])

    async def _teacher_answer(self, capture_id: str) -> tuple[dict[str, Any], float | None] | None:
        deadline = time.monotonic() + _CAPTURE_WAIT_S
        while True:
            record = await self.store.get(capture_id)
            if record is not None:
                break
            if time.monotonic() > deadline:
                logger.info("shadow: capture %s was not stored in time; skipped", capture_id)
                return None
            await asyncio.sleep(0.05)
        try:
            message = record.response["choices"][0]["message"]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
        return message, record.latency_ms

    async def _ask_student(
        self, route: Route, request: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, str | None]:
        assert self._client is not None
        body = {**request, "model": route.student.model, "stream": False}
        body.pop("stream_options", None)
        headers = {"content-type": "application/json"}
        if route.student.api_key_env and (key := os.environ.get(route.student.api_key_env)):
            headers["authorization"] = f"Bearer {key}"
        try:
            response = await self._client.post(
                route.student.base_url + "/chat/completions",
                content=orjson.dumps(body),
                headers=headers,
                timeout=route.timeout_s,
            )
            answer = response.json()
            if response.status_code >= 400:
                return None, f"student answered {response.status_code}"
            return answer["choices"][0]["message"], None
        except httpx.TimeoutException:
            return None, "student timeout"
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            return None, f"student failed: {type(exc).__name__}"


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
