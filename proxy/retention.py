"""Retention: hard-delete captures older than ``STILLROOM_RETENTION_DAYS`` in the background.

A ``Retention`` owned by the app's lifespan purges once at start and then every ``interval``
seconds (an hour by default) through ``Store.purge_before``, the same hard delete as
``DELETE /admin/captures/{id}``. A store error is logged and the next pass tries again; ``stop``
waits for a pass in progress and ends the loop. The clock and interval are injectable so a test
can run many passes in a moment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from proxy.tasks import spawn
from storage.base import Store
from storage.errors import StoreError

DAY_SECONDS = 86_400.0
PURGE_INTERVAL = 3600.0


class Retention:
    """Purge captures older than ``days``: at ``start`` and then every ``interval`` seconds."""

    def __init__(
        self,
        store: Store,
        *,
        days: float,
        interval: float = PURGE_INTERVAL,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        self._store = store
        self._max_age = days * DAY_SECONDS
        self._interval = interval
        self._clock = clock
        self._logger = logger or logging.getLogger("stillroom.retention")
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # purge passes finished, failed ones included
        self.deleted_total = 0

    def start(self) -> None:
        if self._task is None:
            self._task = spawn(self._run(), name="stillroom-retention")

    async def stop(self, *, timeout: float = 10.0) -> None:
        """End the loop; a pass in progress gets ``timeout`` seconds, then is cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            self._logger.warning("retention: purge still running at shutdown, cancelled")

    async def purge_once(self) -> int:
        """One pass: delete captures created before now minus ``days``; the number deleted."""
        cutoff = self._clock() - self._max_age
        deleted = await self._store.purge_before(cutoff)
        self.deleted_total += deleted
        if deleted:
            self._logger.info("retention: deleted %d captures older than the cutoff", deleted)
        return deleted

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.purge_once()
            except StoreError as exc:
                self._logger.warning("retention: purge failed, retrying next pass: %s", exc)
            self.passes += 1
            try:
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            except TimeoutError:
                pass
