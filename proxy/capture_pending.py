"""A capture the client already has an id for, but the store does not have yet.

The proxy hands out a capture's id with the response (``X-Stillroom-Capture-Id``); the capture
reaches the store a little later. It waits in the writer's queue (up to the flush interval)
and, with deferred indexing, in the spool until the indexer has stored it: a moment, or up to
``STILLROOM_CAPTURE_INDEX_MAX_LAG`` under sustained full load. An app that sends feedback for
the id it has just been given would otherwise be told there is no such capture.

``CapturePending.settle`` waits until everything queued before the call is stored (or
dropped, and counted): the writer has settled its first N records (it is asked to flush at
once), then the indexer's stored position has passed the spool's end as of that moment (it is
asked to hurry while anyone waits: to index up to there at normal priority, without waiting
for the proxy to be idle). ``find`` wraps a lookup by id (the admin API's capture routes, the
Stored Completions API): a capture that is missing while captures are on their way is looked
up again once they have settled; if they do not settle within
``SETTLE_S``, the answer is ``proxy.errors.CaptureNotStoredYet`` (409, ``Retry-After``), which
the OpenAI SDKs retry, instead of a 404 that would be wrong; so is a lookup beyond
``MAX_WAITERS`` waiting at once. A capture whose exchange has not ended (a stream still
running) is not on its way yet, and another replica's queue is not seen: those are 404s. Bulk
edits and retention act on stored captures only.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from proxy.errors import CaptureNotStoredYet

if TYPE_CHECKING:
    from proxy.capture_indexer import CaptureIndexer
    from proxy.writer import CaptureWriter

T = TypeVar("T")

SETTLE_S = 5.0  # how long a lookup waits for captures on their way before answering 409
POLL_S = 0.05
MAX_WAITERS = 32  # lookups waiting at once; more are answered 409 at once


class CapturePending:
    """Waits for the captures queued so far to reach the store (see the module)."""

    def __init__(self, writer: CaptureWriter, indexer: CaptureIndexer | None = None) -> None:
        self._writer = writer
        self._indexer = indexer
        self._waiters = 0
        self._hurrying = 0  # settles waiting for the indexer

    def busy(self) -> bool:
        """Some capture queued so far is not stored (nor dropped) yet."""
        writer, indexer = self._writer, self._indexer
        if writer.settled_total < writer.queued_total:
            return True
        return indexer is not None and indexer.backlog_bytes > 0

    async def settle(self, timeout_s: float) -> bool:
        """Wait until every capture queued before this call is stored or dropped; False if
        ``timeout_s`` ran out first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        writer, indexer = self._writer, self._indexer
        target = writer.queued_total
        if writer.settled_total < target:
            writer.flush_soon()  # do not wait for the flush interval
        while writer.settled_total < target:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
        if indexer is None:
            return True
        end = indexer.spool_end
        if indexer.stored_position >= end:
            return True
        self._hurrying += 1
        try:
            indexer.hurry(end)  # do not wait for the proxy to be idle
            while indexer.stored_position < end:
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(POLL_S)
            return True
        finally:
            self._hurrying -= 1
            if not self._hurrying:  # nobody waits any more: back to idle priority
                indexer.unhurry()

    async def find(
        self,
        ref: str,
        lookup: Callable[[], Awaitable[T | None]],
        *,
        what: str = "capture",
        timeout_s: float | None = None,
    ) -> T | None:
        """``lookup()``, and again once the captures on their way have settled if it found
        nothing at first; ``CaptureNotStoredYet`` if they do not settle within ``timeout_s``
        (default ``SETTLE_S``)."""
        busy = self.busy()  # before the lookup: a capture stored during it is looked up again
        found = await lookup()
        if found is not None or not (busy or self.busy()):
            return found
        if self._waiters >= MAX_WAITERS:
            raise self._not_yet(what, ref)
        self._waiters += 1
        try:
            settled = await self.settle(SETTLE_S if timeout_s is None else timeout_s)
        finally:
            self._waiters -= 1
        if not settled:
            raise self._not_yet(what, ref)
        return await lookup()

    def _not_yet(self, what: str, ref: str) -> CaptureNotStoredYet:
        lag = self._indexer.lag_s if self._indexer is not None else 0.0
        return CaptureNotStoredYet(
            f"{what} {ref:.100} is not stored yet, or does not exist: captures are on their "
            f"way to the store (about {lag:.0f} s behind); retry later",
            retry_after_s=max(1, math.ceil(min(lag, 60.0))),
        )


async def find_capture(
    pending: CapturePending | None,
    ref: str,
    lookup: Callable[[], Awaitable[T | None]],
    *,
    what: str = "capture",
) -> T | None:
    """``pending.find(...)``, or just ``lookup()`` without a capture pipeline."""
    if pending is None:
        return await lookup()
    return await pending.find(ref, lookup, what=what)
