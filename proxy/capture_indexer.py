"""The parent's handle on the capture indexer process (``proxy.indexer``).

``CaptureIndexer`` starts the process (forkserver where there is one: a fork of a small,
single-threaded server process, fast and safe from a threaded parent; else spawn), restarts it
when it dies, reads its counters for the metrics, and on ``stop`` asks it to drain, waits up to
a deadline, then ends it; what is left stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
from collections.abc import Callable
from typing import Any

from proxy.indexer import (
    CAPTURE_ERROR,
    DRAIN,
    END,
    HURRY_UNTIL,
    INDEXED,
    LAG_MS,
    POSITION,
    RETRIES,
    SKIPPED_BYTES,
    SLOTS,
    STORAGE_ERROR,
    IndexerOptions,
    run,
)
from proxy.tasks import cancel_and_wait, spawn

logger = logging.getLogger("stillroom.indexer")


def _context() -> Any:
    """forkserver where there is one (a fork of a small clean process: fast and thread-safe),
    else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["proxy.indexer"])
        return ctx
    return multiprocessing.get_context("spawn")


class CaptureIndexer:
    """Starts, watches and stops the indexer process; its counters for the metrics."""

    def __init__(
        self,
        options: IndexerOptions,
        *,
        spool_end: Callable[[], int | None] = lambda: None,
        restart_after_s: float = 1.0,
    ) -> None:
        """``spool_end``: where the proxy's own appends have reached (the backlog's end
        before the indexer has looked)."""
        self.options = dataclasses.replace(options, server_pid=os.getpid())
        self._spool_end = spool_end
        self._ctx = _context()
        self._counters = self._ctx.Array("q", SLOTS, lock=False)
        self._process: Any = None
        self._pipe: multiprocessing.connection.Connection | None = None
        self._watch: asyncio.Task[None] | None = None
        self._restart_after_s = restart_after_s
        self._stopping = False
        self._spawning: asyncio.Future[None] | None = None
        self.restarts = 0

    # -- counters ----------------------------------------------------------------------------

    @property
    def indexed_total(self) -> int:
        return int(self._counters[INDEXED])

    @property
    def spool_end(self) -> int:
        """The end of what is spooled: the writer's, else what the indexer last saw."""
        return max(self._spool_end() or 0, int(self._counters[END]))

    @property
    def backlog_bytes(self) -> int:
        """Spooled bytes not yet stored as captures."""
        return max(0, self.spool_end - int(self._counters[POSITION]))

    @property
    def lag_s(self) -> float:
        return int(self._counters[LAG_MS]) / 1000.0

    @property
    def stored_position(self) -> int:
        """The spool position up to which captures are stored."""
        return int(self._counters[POSITION])

    @property
    def skipped_bytes(self) -> int:
        """Spool bytes that could not be read (torn or corrupt) and were skipped."""
        return int(self._counters[SKIPPED_BYTES])

    @property
    def retries_total(self) -> int:
        """Times the indexer could not store (database locked, full, unavailable) and waited."""
        return int(self._counters[RETRIES])

    def dropped_total(self) -> dict[str, int]:
        return {
            "capture_error": int(self._counters[CAPTURE_ERROR]),
            "storage_error": int(self._counters[STORAGE_ERROR]),
        }

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._spawn)
        self._watch = spawn(self._watchdog(), name="capture-indexer-watchdog")

    def _spawn(self) -> None:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=run,
            args=(self.options, self._counters, child),
            name="stillroom-indexer",
            daemon=True,
        )
        process.start()
        child.close()
        self._process, self._pipe = process, parent

    async def _watchdog(self) -> None:
        delay = self._restart_after_s
        while not self._stopping:
            await asyncio.sleep(delay)
            if self._stopping or self.alive:
                delay = self._restart_after_s
                continue
            code = self._process.exitcode if self._process is not None else None
            self.restarts += 1
            logger.error("capture indexer exited (code %s); restarting it", code)
            try:
                # Shielded: a stop() that cancels us meanwhile still gets the new process.
                await asyncio.shield(self._restart())
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. out of processes: keep trying, the spool waits
                logger.exception("could not restart the capture indexer")
            delay = min(30.0, delay * 2)

    def _restart(self) -> asyncio.Future[None]:
        self._spawning = asyncio.get_running_loop().run_in_executor(None, self._spawn)
        return self._spawning

    def hurry(self, until: int) -> None:
        """Ask the indexer to store up to spool position ``until`` at normal priority, without
        waiting for the proxy to be idle (someone waits for a capture: ``proxy.capture_pending``),
        until ``unhurry``. A shared counter: never blocks, and a restarted indexer sees it."""
        self._counters[HURRY_UNTIL] = max(int(self._counters[HURRY_UNTIL]), until)

    def unhurry(self) -> None:
        self._counters[HURRY_UNTIL] = 0

    async def stop(self, deadline_s: float) -> int:
        """Index what is left (up to ``deadline_s``) and stop; the bytes left for the next
        start."""
        self._stopping = True
        with contextlib.suppress(Exception):
            await cancel_and_wait(self._watch)
        if self._spawning is not None:  # a restart in progress: stop what it starts
            with contextlib.suppress(Exception):
                await self._spawning
        process, pipe = self._process, self._pipe
        if process is None or pipe is None:
            return 0
        try:
            pipe.send(DRAIN)
        except OSError:
            pass
        await asyncio.to_thread(process.join, deadline_s)
        if process.is_alive():
            process.terminate()
            await asyncio.to_thread(process.join, 5.0)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
        pipe.close()
        return self.backlog_bytes
