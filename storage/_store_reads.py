"""Store methods that only sequence backend calls, shared by SQLite and Postgres (private).

Each backend names its own read functions in a ``ReadSQL`` (``fn(conn, *args)``, sync for
SQLite, async for Postgres) and runs them with its ``_read``; what a page, a chain or a dataset
walk does with the results is the same everywhere, so it is written once here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

from storage.datasets import DatasetItem, DatasetPair, Split
from storage.query import CaptureFilter, Conversation, Order, Page, StoredCapture, is_capture_id


class ReadSQL(NamedTuple):
    """A backend's read functions, each called as ``fn(conn, *args)`` inside ``_read``."""

    list_page: Callable[..., Any]  # (where, after, limit, order) -> (items, has_more)
    get_one: Callable[..., Any]  # (ref, key_fingerprint, by_response_id) -> StoredCapture | None
    chain: Callable[..., Any]  # (capture_id) -> (captures, complete, missing) | None
    count_where: Callable[..., Any]  # (where) -> int
    time_quantile: Callable[..., Any]  # (where, q) -> float | None
    captures_after: Callable[..., Any]  # (where, after_seq, limit) -> (captures, last_seq)
    dataset_row: Callable[..., Any]  # (name) -> (dataset_id, info) | None
    dataset_items: Callable[..., Any]  # (dataset_id, split, after, limit) -> rows
    dataset_pairs: Callable[..., Any]  # (dataset_id, split, after, limit) -> rows


class SharedReads:
    """Mixin: needs the backend's ``READS`` and its ``_read(fn, *args)``."""

    READS: ReadSQL

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def get(self, capture_id: str) -> Any:
        found = await self._read(self.READS.get_one, capture_id, None, False)
        return found.record if found is not None else None

    async def count(self, where: CaptureFilter | None = None) -> int:
        return int(await self._read(self.READS.count_where, where or CaptureFilter()))

    async def time_quantile(self, where: CaptureFilter, q: float) -> float | None:
        found = await self._read(self.READS.time_quantile, where, q)
        return None if found is None else float(found)

    async def list_captures(
        self,
        where: CaptureFilter,
        *,
        after: str | None = None,
        limit: int = 50,
        order: Order = "desc",
    ) -> Page:
        items, has_more = await self._read(self.READS.list_page, where, after, limit, order)
        return Page(items, has_more)

    async def get_capture(
        self, ref: str, *, key_fingerprint: str | None = None
    ) -> StoredCapture | None:
        by_response_id = not is_capture_id(ref)
        found: StoredCapture | None = await self._read(
            self.READS.get_one, ref, key_fingerprint, by_response_id
        )
        return found

    async def conversation(self, capture_id: str) -> Conversation | None:
        found = await self._read(self.READS.chain, capture_id)
        if found is None:
            return None
        captures, complete, missing = found
        return Conversation(captures, complete, missing)

    async def iter_captures(
        self, where: CaptureFilter, *, batch: int = 500
    ) -> AsyncIterator[list[StoredCapture]]:
        after = 0
        while True:
            found, after = await self._read(self.READS.captures_after, where, after, batch)
            if found:
                yield found
            if len(found) < batch:
                return

    async def dataset_items(
        self, name: str, split: Split | None = None, *, batch: int = 500
    ) -> AsyncIterator[list[tuple[DatasetItem, StoredCapture | None]]]:
        async for rows in self._dataset_rows(self.READS.dataset_items, name, split, batch):
            yield rows

    async def dataset_pairs(
        self, name: str, split: Split | None = None, *, batch: int = 500
    ) -> AsyncIterator[list[tuple[DatasetPair, StoredCapture | None, StoredCapture | None]]]:
        async for rows in self._dataset_rows(self.READS.dataset_pairs, name, split, batch):
            yield rows

    async def _dataset_rows(
        self, fn: Callable[..., Any], name: str, split: Split | None, batch: int
    ) -> AsyncIterator[Any]:
        """A dataset's rows (items or pairs) in position order, ``batch`` at a time."""
        found = await self._read(self.READS.dataset_row, name)
        if found is None:
            return
        after = -1
        while True:
            rows = await self._read(fn, found[0], split, after, batch)
            if not rows:
                return
            yield rows
            after = rows[-1][0].position


def stats_values(by: dict[str, dict[str, int]], sums: list[int], tag_rows: Any) -> dict[str, Any]:
    """``Stats`` fields from a backend's aggregates: counts by model, endpoint, outcome and day,
    the eight sums (captures, five token kinds, with feedback, excluded), and
    ``(key, value, count)`` tag rows, most frequent first."""
    by_tag: dict[str, dict[str, int]] = {}
    for key, value, n in tag_rows:
        by_tag.setdefault(key, {})[value] = n

    def ranked(counts: dict[str, int]) -> dict[str, int]:
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    return {
        "captures": sums[0],
        "input_tokens": sums[1],
        "output_tokens": sums[2],
        "total_tokens": sums[3],
        "cached_tokens": sums[4],
        "reasoning_tokens": sums[5],
        "with_feedback": sums[6],
        "excluded": sums[7],
        "by_model": ranked(by["model"]),
        "by_endpoint": ranked(by["endpoint"]),
        "by_outcome": ranked(by["outcome"]),
        "by_day": dict(sorted(by["day"].items())),
        "by_tag": by_tag,
    }
