"""``JobCounts``: how many training jobs there are per backend and status, for ``/metrics``.

A Prometheus collector runs synchronously at scrape time and the store is async, so the counts
``/metrics`` shows are a snapshot: read once at ``start`` and then every ``interval`` seconds
(``STILLROOM_METRICS_REFRESH``) by one task the app's lifespan owns (``stop`` ends it). A read
is one ``GROUP BY`` (``Store.count_jobs``). When the store fails, the last snapshot stays,
``failures`` counts it, and a warning is logged at most once per ``warn_every`` seconds (and one
line when reads work again): neither ``/metrics`` nor a request ever waits on the store.

Jobs live in the store, not in a replica, so every replica sharing a Postgres reports the same
counts: aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from proxy.tasks import cancel_and_wait, spawn
from storage.base import Store
from storage.errors import StoreError

WARN_EVERY: Final = 300.0


class JobCounts:
    """The latest counts read from the store (``None`` until a read has worked)."""

    def __init__(
        self,
        store: Store,
        *,
        interval: float,
        warn_every: float = WARN_EVERY,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        self._store = store
        self._interval = interval
        self._warn_every = warn_every
        self._clock = clock
        self._logger = logger or logging.getLogger("stillroom.training")
        self._task: asyncio.Task[None] | None = None
        self._warned_at: float | None = None  # monotonic time of the last warning of a streak
        self.counts: dict[tuple[str, str], int] | None = None  # (backend, status) -> jobs
        self.refreshed_at: float | None = None  # unix time of the read ``counts`` came from
        self.failures = 0

    async def start(self) -> None:
        """Read now (a failure is only counted), then every ``interval`` seconds."""
        await self._refresh_safely()
        if self._task is None:
            self._task = spawn(self._refresh_forever(), name="stillroom-job-counts")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def refresh(self) -> bool:
        """One read of the store; False (the last snapshot kept) when it failed."""
        try:
            counts = await self._store.count_jobs()
        except StoreError as exc:
            self.failures += 1
            now = time.monotonic()
            if self._warned_at is None or now - self._warned_at >= self._warn_every:
                self._warned_at = now
                self._logger.warning(
                    "could not count training jobs for /metrics (%d failed reads; the last "
                    "counts stay): %s",
                    self.failures,
                    exc,
                )
            return False
        if self._warned_at is not None:
            self._warned_at = None
            self._logger.info("training jobs are counted for /metrics again")
        self.counts, self.refreshed_at = counts, self._clock()
        return True

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._refresh_safely()

    async def _refresh_safely(self) -> None:
        """``refresh``, with an error that is not the store's (a bug) logged and counted: it
        never stops the proxy's start or this loop."""
        try:
            await self.refresh()
        except Exception:
            self.failures += 1
            self._logger.exception("counting training jobs for /metrics failed")
