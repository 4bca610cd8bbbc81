"""The capture indexer: a child process that turns spooled exchanges into capture records.

With a SQLite store, capture costs a request almost nothing: the tee's copy is packed
(``proxy.frames``) and the writer appends a batch of them to the store's spool with one write
(``storage.spool``). Everything else a capture needs (parsing the request, reassembling the
stream, the record, content-addressed request blobs, tags, the full-text index) happens here,
in a process of its own. It waits while the proxy process used more than ``busy_share`` of a
core over the last tenth of a second (read from ``/proc``): a proxy near saturation keeps its
CPU, its caches and a container's CPU quota to itself. Where the process may leave it again
(``CAP_SYS_NICE`` or ``RLIMIT_NICE`` ≥ 20, see ``_Priority``) it also runs at Linux's
``SCHED_IDLE``, so the kernel gives it only CPU time nothing else wants; elsewhere it runs at
normal priority behind the gate alone. A busy proxy therefore spends its CPU on requests, and
the backlog is indexed when load drops.

Bounds: when the oldest waiting exchange is older than ``max_lag_s``, or more than
``max_backlog_bytes`` wait, the indexer runs at normal priority and stops waiting for the proxy,
until it is back under half of both. On a graceful stop the parent sends ``drain``: the indexer
indexes everything left at normal priority, then exits; what a deadline cuts off stays in the
spool and is indexed after the next start. If the parent dies (``kill -9``), the pipe closes and
the indexer exits: each batch is one database transaction, so it is stored whole or not at all.
A crashed indexer is restarted by the parent (``proxy.capture_indexer``); the spool waits for
it.

Each batch of records is stored together with the spool position after its last frame
(``capture_spool``), so every spooled exchange becomes a capture exactly once. Counting, in a
shared array the parent's metrics read: records indexed, exchanges that could not be built
into a record (``capture_error``), records the store rejected (``storage_error``), the spool
position stored, the backlog's lag, and bytes of spool that could not be read (a torn or
corrupt segment end, logged). Each is counted when the transaction that moves the position
past it commits. Retriable store errors (locked, full, unavailable) keep the position and
retry with capped backoff.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from proxy import frames
from proxy.records import build_record
from proxy.writer import RateLimitedLog
from storage import spool
from storage.errors import StoreError
from storage.models import CaptureRecord
from storage.sqlite import encode_records, open_sync_writer, translated_errors, write_encoded

# Slots of the shared counter array.
INDEXED, CAPTURE_ERROR, STORAGE_ERROR, POSITION, END, LAG_MS, RETRIES, SKIPPED_BYTES = range(8)
# Set by the parent while someone waits for a capture (proxy.capture_pending): index up to this
# spool position at normal priority, past the busy gate; 0 when nobody waits.
HURRY_UNTIL = 8
SLOTS = 9

_CAP_SYS_NICE = 23
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 2.0
BUSY_WINDOW_S = 0.1
DRAIN = "drain"

logger = logging.getLogger("stillroom.indexer")


@dataclass(frozen=True, slots=True)
class IndexerOptions:
    path: str  # the SQLite database file; its spool is beside it
    batch_size: int = 200  # exchanges stored per transaction
    max_lag_s: float = 60.0
    max_backlog_bytes: int = 1 << 30
    poll_s: float = 0.05  # how often an idle indexer looks for new exchanges
    busy_share: float = 0.5  # wait while the proxy used more of a core than this
    server_pid: int | None = None  # the proxy process, whose CPU use is watched
    busy_timeout_s: float = 5.0
    max_bytes: int | None = None  # the store's size cap, if any


# -- the child process -----------------------------------------------------------------------


class _Priority:
    """``SCHED_IDLE`` where this process may leave it again, else normal scheduling.

    Leaving ``SCHED_IDLE`` (to drain, to catch up past a bound, or for a commit that holds the
    database's write lock) needs ``CAP_SYS_NICE`` or an ``RLIMIT_NICE`` of 20 or more; a
    default container has neither. There the indexer stays at normal priority and only the
    busy gate (``_ServerLoad``) holds it back.
    """

    def __init__(self) -> None:
        self.can_idle = _may_leave_idle()
        self.idle = False

    def set(self, idle: bool) -> None:
        if self.can_idle and idle != self.idle and _apply(idle):
            self.idle = idle

    @contextlib.contextmanager
    def raised(self) -> Iterator[None]:
        """Normal priority for a moment: a commit holding the write lock is not paused."""
        if not self.idle:
            yield
            return
        self.set(False)
        try:
            yield
        finally:
            self.set(True)


def _apply(idle: bool) -> bool:
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:
        return False
    return True


def _may_leave_idle() -> bool:
    """Whether this process could switch from ``SCHED_IDLE`` back to normal scheduling."""
    if not (hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE")):
        return False
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or soft >= 20:
        return True
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except (OSError, ValueError):
        pass
    return False


class _ServerLoad:
    """The share of a core the proxy process used since the last look (from /proc)."""

    def __init__(self, pid: int | None) -> None:
        self._path = f"/proc/{pid}/stat" if pid is not None else None
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last: tuple[float, float] | None = None

    def _cpu(self) -> float | None:
        if self._path is None:
            return None
        try:
            with open(self._path, "rb") as file:
                fields = file.read().rpartition(b")")[2].split()
        except OSError:
            self._path = None
            return None
        return (int(fields[11]) + int(fields[12])) / self._tick

    def busy(self, share: float) -> bool:
        """True when the proxy used more than ``share`` of a core over the last window."""
        cpu = self._cpu()
        if cpu is None:
            return False
        now = time.monotonic()
        last, self._last = self._last, (now, cpu)
        if last is None or now - last[0] <= 0:
            return False
        return (cpu - last[1]) / (now - last[0]) > share


def _wait(pipe: multiprocessing.connection.Connection, seconds: float) -> None:
    """Sleep up to ``seconds``; a message from the parent (or its death) wakes us early."""
    try:
        pipe.poll(seconds)
    except (EOFError, OSError):
        pass


class _Indexer:
    """The child's state: its database connection, the spool reader, and the counters.

    Holds the spool's reader lock: a second indexer (a restarted proxy's, while the killed
    one's finishes its batch) waits for it.
    """

    def __init__(
        self, options: IndexerOptions, counters: Any, priority: _Priority | None = None
    ) -> None:
        self.options = options
        self.counters = counters
        self.priority = priority or _Priority()
        self.folder = spool.spool_dir(options.path)
        self._lock = spool.reader_lock(self.folder)
        try:
            with translated_errors():
                self.db = open_sync_writer(
                    options.path,
                    busy_timeout_s=options.busy_timeout_s,
                    max_bytes=options.max_bytes,
                )
                try:
                    # FULL: the position is on disk before collect() erases what it covers.
                    self.db.execute("PRAGMA synchronous = FULL").fetchall()
                    position = spool.stored_position(self.db)
                except BaseException:
                    self.db.close()
                    raise
        except BaseException:
            os.close(self._lock)
            raise
        self.reader = spool.SpoolReader(self.folder, position)
        counters[POSITION] = position
        self.log = RateLimitedLog(logger, 10.0)
        self.reader.collect(position)  # what an earlier run stored and left behind

    def close(self) -> None:
        self.log.flush()
        self.db.close()
        os.close(self._lock)

    def backlog(self) -> int:
        end = spool.end_position(self.folder)
        self.counters[END] = end
        return max(0, end - int(self.counters[POSITION]))

    def lag(self) -> float:
        """Seconds since the oldest exchange not yet stored was captured (0: none waits)."""
        payload = self.reader.peek()
        if payload is None:
            return 0.0
        try:
            created = frames.decode(payload).created_at
        except (frames.FrameError, TypeError):
            return 0.0
        lag = max(0.0, time.time() - float(created))
        self.counters[LAG_MS] = int(lag * 1000)
        return lag

    def step(self) -> bool:
        """Index one batch; False when there was nothing whole to read."""
        stored = int(self.counters[POSITION])
        try:
            batch = self.reader.read(self.options.batch_size)
        except BaseException:
            self._rewind(stored)
            raise
        if not batch:
            if self.reader.position > stored:
                # Only unreadable bytes since the stored position (a torn or corrupt end):
                # store the position past them, or the backlog would never be empty.
                return self._skip_past(stored)
            self.counters[LAG_MS] = 0
            return False
        items: list[tuple[int, CaptureRecord | None]] = []
        for frame in batch:
            try:
                items.append((frame.after, build_record(frames.decode(frame.payload))))
            except Exception as exc:  # a capture bug costs that capture, never the indexer
                items.append((frame.after, None))
                self.log.warning("build", 1, "could not build a spooled capture (%r); dropped", exc)
        try:
            with self.priority.raised():  # holds the database's write lock: not paused
                self._store(items)
        except BaseException:
            self._rewind(stored)
            raise
        self._report_skipped()
        self.reader.collect(int(self.counters[POSITION]))
        return True

    def _skip_past(self, stored: int) -> bool:
        position = self.reader.position
        try:
            with self.priority.raised():
                self._commit([], position, broken=0)
        except BaseException:
            self._rewind(stored)
            raise
        self._report_skipped()
        self.reader.collect(position)
        return True

    def _rewind(self, stored: int) -> None:
        """Back to the stored position: what was read since is read (and judged) again."""
        self.reader.position = stored
        self.reader.skipped.clear()

    def _store(self, items: list[tuple[int, CaptureRecord | None]]) -> None:
        """Store the records of ``items`` and the position after the last one, in one
        transaction; a record the store cannot take is isolated by halving and dropped."""
        records = [record for _, record in items if record is not None]
        try:
            self._commit(records, items[-1][0], broken=len(items) - len(records))
        except Exception as exc:
            if (isinstance(exc, StoreError) and type(exc) is not StoreError) or not records:
                raise  # retriable (locked, full, unavailable): nothing stored, nothing counted
            if len(records) == 1:
                self.log.warning("rejected", 1, "capture %s rejected: %s", records[0].id, exc)
                self._commit([], items[-1][0], broken=len(items) - 1, rejected=1)
                return
            half = len(items) // 2
            self._store(items[:half])
            self._store(items[half:])

    def _commit(
        self, records: list[CaptureRecord], position: int, *, broken: int, rejected: int = 0
    ) -> None:
        with translated_errors():
            write_encoded(self.db, encode_records(records), records, spool_position=position)
        self.counters[POSITION] = position
        self.counters[INDEXED] += len(records)
        self.counters[CAPTURE_ERROR] += broken
        self.counters[STORAGE_ERROR] += rejected

    def _report_skipped(self) -> None:
        for gap in self.reader.skipped:
            self.counters[SKIPPED_BYTES] += gap.end - gap.start
            self.log.warning(
                "skipped",
                1,
                "capture spool: %d bytes at position %d could not be read (%s); skipped",
                gap.end - gap.start,
                gap.start,
                gap.why,
            )
        self.reader.skipped.clear()


def run(
    options: IndexerOptions, counters: Any, pipe: multiprocessing.connection.Connection
) -> None:
    """The indexer process: index the spool until drained (``drain``) or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent drains us
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    priority = _Priority()
    priority.set(idle=True)
    load = _ServerLoad(options.server_pid)
    indexer: _Indexer | None = None
    draining = False
    over = False
    delay = RETRY_INITIAL_S
    try:
        while True:
            try:
                if pipe.poll():
                    pipe.recv()
                    draining = True
                    priority.set(idle=False)
            except (EOFError, OSError):
                return  # the parent is gone
            try:
                if indexer is None:
                    indexer = _Indexer(options, counters, priority)
                waiting = indexer.backlog()
                if not waiting:
                    counters[LAG_MS] = 0
                    if draining:
                        return
                    over = False
                    priority.set(idle=True)
                    _wait(pipe, options.poll_s)
                    continue
                if not draining:
                    over = _over_bounds(options, over, indexer.lag(), waiting)
                    hurried = int(counters[POSITION]) < int(counters[HURRY_UNTIL])
                    priority.set(idle=not (over or hurried))
                    if not (over or hurried) and load.busy(options.busy_share):
                        _wait(pipe, BUSY_WINDOW_S)
                        continue
                if not indexer.step():
                    _wait(pipe, options.poll_s)  # a frame is being written: look again soon
                delay = RETRY_INITIAL_S
            except (StoreError, OSError) as exc:  # locked, full, unavailable: the spool waits
                counters[RETRIES] += 1
                logger.warning("capture indexer: %s; retrying in %.2f s", exc, delay)
                _wait(pipe, delay)
                delay = min(RETRY_MAX_S, delay * 2)
    finally:
        if indexer is not None:
            indexer.close()


def _over_bounds(options: IndexerOptions, over: bool, lag_s: float, waiting: int) -> bool:
    """Over either bound; once over (``over``), until back under half of both."""
    if lag_s > options.max_lag_s or waiting > options.max_backlog_bytes:
        return True
    return over and (lag_s > options.max_lag_s / 2 or waiting > options.max_backlog_bytes // 2)
