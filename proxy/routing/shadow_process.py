"""Shadow traffic in a process of its own: ``ShadowProcess`` (the proxy's side) and ``main``
(the worker: ``python -m proxy.routing.shadow_process``, its database in the environment).

At a full shadow rate a student that answers fast gets as many requests as the clients send,
and asking it, reading its answer, scoring the pair and storing it costs the proxy's core more
than a millisecond of client latency at concurrency 16 (bench/shadow_overhead.py). So the proxy
only encodes each shadow as one JSON line (route, request, the teacher's answer) and writes it
to the worker's stdin; the worker runs ``ShadowSender`` (the per-route concurrency cap, the
timeout, the graders, batched writes of the pairs to its own connection to the store) and
reports its counters as one JSON line on stdout ten times a second, which ``/metrics`` shows.
Each report also says how much room its queue has: the proxy writes no more frames than that
room beyond what the worker has read (credit-based flow control), so while the student is at its
concurrency cap and behind, the proxy drops new shadows before encoding them, and a shadow it
does encode is one the worker has room for.

The worker starts on the first shadow (a proxy whose routes never shadow never starts it), runs
on the CPUs the proxy is not pinned to when it is pinned to some, and is restarted if it dies.
Its stdin is bounded: past ``max_buffer`` bytes waiting, new shadows are dropped and counted,
never queued in the proxy. A graceful stop closes stdin; the worker finishes what it holds,
writes its pairs and exits (killed after ``stop_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Any, Final

import orjson

from proxy.routing.routes import Route, parse_route
from proxy.routing.shadow import Shadow, ShadowSender, teacher_message
from proxy.tasks import spawn
from storage.models import CaptureRecord

logger = logging.getLogger("stillroom.routing")

_STATS_EVERY: Final = 0.1
WORKER_NICENESS: Final = 10  # added to the worker's nice value: below the proxy's priority
WORKER_QUEUE: Final = 256  # shadows the worker holds: a backlog of seconds, not minutes
_EARLY_FRAMES: Final = WORKER_QUEUE  # frames kept while the worker starts
_DATABASE_VAR: Final = "STILLROOM_WORKER_DATABASE_INTERNAL"


class ShadowProcess:
    """``ShadowSender``'s interface, the work done by a worker process."""

    def __init__(
        self, database: str, *, max_buffer: int = 8 * 1024 * 1024, stop_timeout: float = 15.0
    ) -> None:
        self.database = database
        self.max_buffer = max_buffer
        self.stop_timeout = stop_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False
        self._early: list[bytes] = []  # frames sent while the worker starts
        self._written = 0  # frames written to the worker
        self._seen = 0  # frames the worker has read (its last report)
        self._written_before_start = 0
        self._room = WORKER_QUEUE  # free places in the worker's queue at its last report
        self._route_json: dict[int, tuple[Route, bytes]] = {}
        self.sent = self.failed = 0
        self.dropped = 0  # here (buffer full, worker down) and in the worker (its queue full)
        self._worker_dropped = 0
        self.in_flight: dict[str, int] = {}
        self.peak_in_flight: dict[str, int] = {}

    @property
    def written(self) -> int:
        """Frames written to workers so far (shadows and pairs)."""
        return self._written

    def start(self) -> None:
        """Nothing yet: the worker starts with the first shadow."""

    async def stop(self) -> None:
        self._stopping = True
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), self.stop_timeout)
        except TimeoutError:
            logger.warning("shadow worker did not stop in time; killed")
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def submit(self, route: Route, request: dict[str, Any], record: CaptureRecord) -> None:
        if self._written - self._seen >= self._room:
            self.dropped += 1  # no room for it in the worker: drop here, before any encoding
            return
        teacher = teacher_message(record)
        if teacher is None:
            return
        # The client's request body is JSON already: it goes as it came, not re-encoded.
        raw = record.request_body if record.request_body else orjson.dumps(request)
        tail = orjson.dumps([teacher, record.id, record.latency_ms])
        self._send_raw(b'["shadow",' + self._route_bytes(route) + b"," + raw + b"," + tail[1:])

    def _route_bytes(self, route: Route) -> bytes:
        cached = self._route_json.get(id(route))
        if cached is None or cached[0] is not route:
            if len(self._route_json) > 256:
                self._route_json.clear()
            cached = self._route_json[id(route)] = (route, orjson.dumps(route.to_json()))
        return cached[1]

    def keep_captured(
        self, route: Route, request: dict[str, Any], teacher: CaptureRecord, student: CaptureRecord
    ) -> None:
        teacher_answer, student_answer = teacher_message(teacher), teacher_message(student)
        if teacher_answer is not None and student_answer is not None:
            frame = [
                "pair",
                route.to_json(),
                request,
                teacher_answer,
                teacher.id,
                teacher.latency_ms,
                student_answer,
                student.id,
                student.latency_ms,
            ]
            self._send_raw(orjson.dumps(frame))

    def _send_raw(self, line: bytes) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            if self._stopping or len(self._early) >= _EARLY_FRAMES:
                self.dropped += 1
                return
            self._early.append(line + b"\n")
            if self._starting is None or self._starting.done():
                self._starting = spawn(self._start(), name="shadow-worker-start")
            return
        transport = proc.stdin.transport
        if transport.get_write_buffer_size() > self.max_buffer:
            self.dropped += 1
            return
        proc.stdin.write(line + b"\n")
        self._written += 1

    async def _start(self) -> None:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.routing.shadow_process",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env=_worker_env(self.database),
            )  # fmt: skip
        except OSError as exc:
            logger.error("could not start the shadow worker: %s", exc)
            return
        logger.info("shadow worker %d started", self._proc.pid)
        self._written_before_start = self._seen = self._written
        self._room = WORKER_QUEUE
        early, self._early = self._early, []
        if self._proc.stdin is not None:
            self._proc.stdin.write(b"".join(early))
            self._written += len(early)
        self._reader = spawn(self._read_stats(self._proc), name="shadow-worker-stats")

    async def _read_stats(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            try:
                stats = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            self.sent, self.failed = int(stats["sent"]), int(stats["failed"])
            self._seen = self._written_before_start + int(stats["seen"])
            self._room = int(stats["room"])
            self.dropped += int(stats["dropped"]) - self._worker_dropped
            self._worker_dropped = int(stats["dropped"])
            self.in_flight = dict(stats["in_flight"])
            self.peak_in_flight = dict(stats["peak_in_flight"])
        code = await proc.wait()
        if not self._stopping:
            logger.error("shadow worker exited with status %s; it restarts with the next one", code)


def _worker_env(database: str) -> dict[str, str]:
    """No settings but the database, which goes in the environment, not on the command line
    (a Postgres URL may hold a password; any user on the host can read a process's argv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    env[_DATABASE_VAR] = database
    return env


def _free_cpus() -> None:
    """Leave the proxy's own CPUs to it, when it is pinned to some and others exist."""
    if not hasattr(os, "sched_getaffinity"):
        return
    mine = os.sched_getaffinity(0)
    every = set(range(os.cpu_count() or 1))
    others = every - mine
    if others:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, others)


def _yield_cpu() -> None:
    """Run below the proxy's priority: shadows are best-effort and must never take a core's
    time from the clients' requests (on a small host they share its cores)."""
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)


# -- the worker -------------------------------------------------------------------------------


_SEEN = [0]  # frames read by this worker process (its stats line reports it)


async def _serve(database: str) -> None:
    from storage.connect import open_store

    store = open_store(database)
    sender = ShadowSender(store, queue_size=WORKER_QUEUE)
    sender.start()
    routes: dict[bytes, Route] = {}
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stats = spawn(_report(sender), name="shadow-stats")
    try:
        while line := await reader.readline():
            _SEEN[0] += 1
            if sender.full() and line.startswith(b'["shadow"'):
                sender.dropped += 1  # no room: dropped before the cost of parsing it
                continue
            try:
                frame = orjson.loads(line)
                key = orjson.dumps(frame[1])
                route = routes.get(key)
                if route is None:
                    route = routes[key] = parse_route(frame[1])
                    if len(routes) > 256:
                        routes.clear()
                shadow = Shadow(route, frame[2], frame[3], frame[4], frame[5])
                if frame[0] == "pair":
                    sender.keep_pair(shadow, frame[6], frame[7], frame[8])
                else:
                    sender.enqueue(shadow)
            except Exception:  # a bad frame is a bug on our side: log it, keep going
                sender.failed += 1
                logging.getLogger("stillroom.routing").exception("shadow worker: bad frame")
        await sender.idle()
    finally:
        stats.cancel()
        await sender.stop()
        _write_stats(sender)
        await store.close()


async def _report(sender: ShadowSender) -> None:
    while True:
        await asyncio.sleep(_STATS_EVERY)
        _write_stats(sender)


def _write_stats(sender: ShadowSender) -> None:
    stats = {
        "seen": _SEEN[0],
        "room": sender.room(),
        "sent": sender.sent,
        "failed": sender.failed,
        "dropped": sender.dropped,
        "in_flight": sender.in_flight,
        "peak_in_flight": sender.peak_in_flight,
    }
    sys.stdout.buffer.write(orjson.dumps(stats) + b"\n")
    sys.stdout.buffer.flush()


def main(argv: list[str]) -> int:
    database = os.environ.get(_DATABASE_VAR)
    if argv or not database:
        sys.stderr.write(
            f"usage: {_DATABASE_VAR}=DATABASE python -m proxy.routing.shadow_process\n"
        )
        return 2
    logging.basicConfig(level=logging.WARNING, format="shadow worker: %(message)s")
    _free_cpus()
    _yield_cpu()
    asyncio.run(_serve(database))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
