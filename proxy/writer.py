"""The capture writer: a bounded in-memory queue and one task that writes it in batches.

The request path calls ``submit(record)``; it never blocks, never raises and never touches the
database. One writer task (``start()``) drains the queue in batches of ``batch_size`` records,
or whatever is queued once the oldest record has waited ``flush_interval`` seconds, each batch
in one store transaction (``store.write_batch``, or ``write`` when given: the SQLite store's
``append_spool`` takes packed exchanges, ``proxy.frames``, for the indexer, ``proxy.indexer``).
``stop(deadline_s)`` writes everything still queued before it returns, so a graceful shutdown
loses nothing; call it before closing the store.

When a record cannot be kept it is dropped and counted under one reason (``DROP_REASONS``):

* ``queue_full``    the queue already holds ``max_queue`` records or ``max_queue_bytes`` bytes
* ``too_large``     one record is bigger than ``max_queue_bytes`` on its own
* ``storage_full``  the store raised ``StoreFull``: the batch is dropped, the next one tries again
* ``storage_error`` the store kept failing (``max_attempts`` tries), or rejected this record
* ``shutdown``      submitted after ``stop()`` began, or still queued when its deadline ran out

``StoreBusy`` (a locked database) and ``StoreUnavailable`` (the database cannot be reached, e.g.
Postgres restarting) are retried with capped exponential backoff (``retry_initial_s`` doubling up
to ``retry_max_s``) for as long as they last; the batch stays in memory, new records queue up
and drop as ``queue_full`` only once the queue is full, and the backlog drains when the store
returns. Other errors are retried ``max_attempts`` times; a plain ``StoreError`` (the store
could not take the data) splits the batch in halves until the bad record is alone, so one bad
record cannot take a whole batch with it.

Accounting is exact at every moment:
``submitted_total == written_total + sum(dropped_total.values()) + queue_depth``, where
``queue_depth`` counts queued records plus the batch being written (both still in memory).

Metrics read plain attributes at scrape time (no Prometheus import here): ``submitted_total``,
``written_total``, ``dropped_total`` (reason -> count, every reason present from the start),
``queue_depth``, ``queue_bytes``, ``batches_total``. For per-batch latency pass
``on_batch(seconds, records)``; it is called after every successful store write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

from proxy.tasks import spawn
from storage.base import Store
from storage.errors import StoreBusy, StoreError, StoreFull, StoreUnavailable
from storage.models import CaptureRecord

DROP_REASONS: Final = ("queue_full", "too_large", "storage_full", "storage_error", "shutdown")
RECORD_OVERHEAD_BYTES: Final = 1024  # fields besides the bodies, in the queue's byte budget

BatchHook = Callable[[float, int], None]
Write = Callable[[list[Any]], Awaitable[None]]


def record_size(record: CaptureRecord | bytes) -> int:
    """Approximate memory a queued record holds: its bodies plus a fixed overhead.

    The reassembled response object is assumed to take about as much as the raw body.
    """
    if isinstance(record, bytes):  # an exchange packed for the spool (``proxy.frames``)
        return RECORD_OVERHEAD_BYTES + len(record)
    response = len(record.response_body)
    return (
        RECORD_OVERHEAD_BYTES
        + len(record.request_body)
        + (2 * response if record.response is not None else response)
    )


class RateLimitedLog:
    """At most one warning per key per interval; what was held back is counted in the next."""

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, n: int, message: str, *args: object) -> None:
        """Log ``message % args`` about ``n`` records, unless ``key`` was logged recently."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._held[key] = self._held.get(key, 0) + n
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            self._logger.warning(message + " (and %d more since the last report)", *args, held)
        else:
            self._logger.warning(message, *args)

    def flush(self) -> None:
        for key, held in self._held.items():
            if held:
                self._logger.warning(
                    "%d more capture(s) affected by %s since the last report", held, key
                )
        self._held.clear()


class CaptureWriter:
    """Bounded, batching, fail-open writer between the request path and a ``Store``."""

    def __init__(
        self,
        store: Store,
        *,
        max_queue: int,
        max_queue_bytes: int,
        batch_size: int,
        flush_interval: float,
        logger: logging.Logger,
        max_attempts: int = 5,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        abandon_grace_s: float = 5.0,
        log_interval_s: float = 10.0,
        on_batch: BatchHook | None = None,
        write: Write | None = None,
    ) -> None:
        if max_queue < 1 or max_queue_bytes < 1 or batch_size < 1 or max_attempts < 1:
            raise ValueError("max_queue, max_queue_bytes, batch_size and max_attempts must be ≥ 1")
        self._write: Write = write if write is not None else store.write_batch
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._logger = logger
        self._max_attempts = max_attempts
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._abandon_grace_s = abandon_grace_s
        self._on_batch = on_batch
        self._log = RateLimitedLog(logger, log_interval_s)

        self.submitted_total = 0
        self.queued_total = 0  # submitted and accepted into the queue (not dropped at once)
        self.written_total = 0
        self.batches_total = 0
        self.dropped_total: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)

        self._queue: deque[tuple[CaptureRecord | bytes, int, float]] = deque()
        self._queued_bytes = 0
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._wakeup = asyncio.Event()  # a record arrived, a batch filled, or flush/stop
        self._abandon = asyncio.Event()  # stop's deadline passed: no more attempts
        self._idle = asyncio.Event()  # nothing queued or in flight
        self._idle.set()
        self._flush_requested = False
        self._closed = False  # stop() began: submit refuses
        self._task: asyncio.Task[None] | None = None

    # -- stats ---------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Records not yet written: queued plus the batch being written."""
        return len(self._queue) + self._in_flight

    @property
    def settled_total(self) -> int:
        """Records queued and since written or dropped. They settle in the order they were
        queued, so once this reaches N the first N of ``queued_total`` are all settled."""
        return self.queued_total - self.queue_depth

    @property
    def queue_bytes(self) -> int:
        """Approximate bytes held by ``queue_depth`` records (see ``record_size``)."""
        return self._queued_bytes + self._in_flight_bytes

    # -- request path --------------------------------------------------------------------

    def submit(self, record: CaptureRecord | bytes) -> bool:
        """Queue ``record`` for writing; False (and counted) when it is dropped.

        Never blocks, never raises, never touches the store. Call it on the event loop thread.
        """
        self.submitted_total += 1
        if self._closed:
            self._drop(1, "shutdown", "capture writer is stopping")
            return False
        try:
            size = record_size(record)
        except (AttributeError, TypeError):  # not a CaptureRecord: let the store judge it
            size = RECORD_OVERHEAD_BYTES
        if size > self._max_queue_bytes:
            self._drop(1, "too_large", f"record of {size} bytes exceeds the queue budget")
            return False
        if self.queue_depth >= self._max_queue or self.queue_bytes + size > self._max_queue_bytes:
            self._drop(1, "queue_full", "capture queue is full")
            return False
        self._queue.append((record, size, time.monotonic()))
        self.queued_total += 1
        self._queued_bytes += size
        if self._idle.is_set():
            self._idle.clear()
        if len(self._queue) == 1 or len(self._queue) >= self._batch_size:
            self._wakeup.set()
        return True

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer task. Call once, from the lifespan."""
        if self._task is not None:
            raise RuntimeError("CaptureWriter already started")
        self._task = spawn(self._run(), name="capture-writer")

    def flush_soon(self) -> None:
        """Write what is queued now without waiting for ``flush_interval``; do not wait."""
        self._flush_requested = True
        self._wakeup.set()

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Write everything queued now, without waiting for ``flush_interval``.

        Returns True once nothing is queued or in flight, False if ``timeout_s`` ran out.
        """
        self.flush_soon()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self, deadline_s: float) -> None:
        """Refuse new records, write every queued one, and end the writer task.

        If ``deadline_s`` runs out first, no new attempt starts; the one in progress gets
        ``abandon_grace_s`` more seconds, and whatever is left is counted as ``shutdown``.
        """
        self._closed = True
        self._wakeup.set()
        if self._task is None:  # never started: drain anyway
            self._task = spawn(self._run(), name="capture-writer")
        task = self._task
        try:
            await asyncio.wait_for(asyncio.shield(task), deadline_s)
        except TimeoutError:
            self._abandon.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), self._abandon_grace_s)
            except TimeoutError:
                task.cancel()
                await asyncio.wait([task])
        left = self.queue_depth
        if left:
            self._queue.clear()
            self._queued_bytes = self._in_flight = self._in_flight_bytes = 0
            self._drop(left, "shutdown", "capture writer stopped before writing")
        self._idle.set()
        self._log.flush()

    # -- writer task -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._flush_requested = False
                self._idle.set()
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._abandon.is_set():
                return  # stop() counts what is left
            if not await self._batch_ready():
                continue
            await self._write_next_batch()

    async def _batch_ready(self) -> bool:
        """Wait until a full batch is queued or the oldest record has waited long enough."""
        if len(self._queue) >= self._batch_size or self._closed or self._flush_requested:
            return True
        wait_s = self._queue[0][2] + self._flush_interval - time.monotonic()
        if wait_s <= 0:
            return True
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), wait_s)
        except TimeoutError:
            return True
        return False  # woken early: look again

    async def _write_next_batch(self) -> None:
        n = min(self._batch_size, len(self._queue))
        items = [self._queue.popleft() for _ in range(n)]
        size = sum(item[1] for item in items)
        self._queued_bytes -= size
        self._in_flight, self._in_flight_bytes = n, size
        try:
            await self._deliver([item[0] for item in items])  # settles every record
        except Exception:  # a bug of ours must not end the writer: count the batch, go on
            self._logger.exception("capture writer failed on a batch of %d", self._in_flight)
            self._drop(self._in_flight, "storage_error", "capture writer error")
            self._in_flight = self._in_flight_bytes = 0
        # Cancelled (stop's deadline): the batch stays in flight, and stop() counts it.

    async def _deliver(self, records: list[CaptureRecord | bytes]) -> None:
        """Write ``records`` in one transaction, retrying; count each record exactly once."""
        attempt = 0
        while True:
            if self._abandon.is_set():
                self._settle(len(records))
                self._drop(len(records), "shutdown", "capture writer stop deadline passed")
                return
            attempt += 1
            started = time.perf_counter()
            try:
                try:
                    await self._write(records)
                except StoreError as exc:
                    if exc.written:  # the first ones were stored all the same
                        records = self._written(records, exc.written)
                    raise
            except StoreFull as exc:
                self._settle(len(records))
                self._drop(len(records), "storage_full", f"capture store is full: {exc}")
                return
            except StoreBusy as exc:
                self._log.warning(
                    "busy", 1, "capture store busy (%s); retrying a batch of %d", exc, len(records)
                )
            except StoreUnavailable as exc:
                self._log.warning(
                    "unavailable",
                    1,
                    "capture store unavailable (%s); holding %d queued, retrying",
                    exc,
                    self.queue_depth,
                )
            except StoreError as exc:
                if type(exc) is StoreError:  # the store cannot take this data
                    if len(records) > 1:
                        half = len(records) // 2
                        await self._deliver(records[:half])
                        await self._deliver(records[half:])
                        return
                    self._settle(1)
                    self._drop(1, "storage_error", f"capture store rejected a record: {exc}")
                    return
                if self._gave_up(records, attempt, exc):
                    return
            except Exception as exc:  # a misbehaving store must not end the writer
                if self._gave_up(records, attempt, exc):
                    return
            else:
                elapsed = time.perf_counter() - started
                self._settle(len(records))
                self.written_total += len(records)
                self.batches_total += 1
                self._report_batch(elapsed, len(records))
                return
            await self._backoff(attempt)

    def _written(self, records: list[CaptureRecord | bytes], n: int) -> list[CaptureRecord | bytes]:
        """The first ``n`` records were stored though the write failed: count them written."""
        n = min(n, len(records))
        self._settle(n)
        self.written_total += n
        return records[n:]

    def _gave_up(self, records: list[CaptureRecord | bytes], attempt: int, exc: Exception) -> bool:
        if attempt < self._max_attempts:
            self._log.warning(
                "retry", 1, "capture store error (%r); retrying a batch of %d", exc, len(records)
            )
            return False
        self._settle(len(records))
        self._drop(len(records), "storage_error", f"capture store failed {attempt} times: {exc!r}")
        return True

    def _settle(self, n: int) -> None:
        """``n`` in-flight records are written or dropped now: release their share."""
        share = self._in_flight_bytes * n // self._in_flight if self._in_flight else 0
        self._in_flight -= n
        self._in_flight_bytes -= share

    async def _backoff(self, attempt: int) -> None:
        delay = min(self._retry_max_s, self._retry_initial_s * 2 ** min(attempt - 1, 30))
        try:
            await asyncio.wait_for(self._abandon.wait(), delay)
        except TimeoutError:
            pass

    def _report_batch(self, seconds: float, n: int) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(seconds, n)
        except Exception:  # a metrics hook must not stop captures
            self._logger.exception("capture writer on_batch hook failed")

    def _drop(self, n: int, reason: str, why: str) -> None:
        self.dropped_total[reason] += n
        self._log.warning(reason, n, "dropped %d capture(s) (%s): %s", n, reason, why)
