"""A dataset's export rows, rebuilt from its captures batch by batch (storage.export; private).

A snapshot keeps capture ids and per-example content hashes, not examples: each example is
rebuilt with ``build_example`` exactly as ``create_dataset`` built it. An item whose capture is
gone, no longer builds, or builds to other content has changed since the snapshot; changed
items are skipped and counted, and ``DatasetChanged`` is raised after the last batch, so a
consumer sees every good row first and then the error (a file export removes its temporary
file; a stream ends abnormally).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from storage._export_formats import Row, openai_dpo_row
from storage.datasets import DatasetChanged, DatasetPair, Progress, Split
from storage.examples import Example, build_example
from storage.query import StoredCapture

if TYPE_CHECKING:
    from storage.base import Store

ToRow = Callable[[Example], Row]


async def item_rows(
    store: Store,
    name: str,
    split: Split | None,
    to_row: ToRow,
    *,
    total: int,
    progress: Progress | None = None,
) -> AsyncIterator[list[Row]]:
    """One list of rows per stored batch of the dataset's items, in export order."""
    changed = done = 0
    async for batch in store.dataset_items(name, split):
        rows: list[Row] = []
        for item, stored in batch:
            example = await rebuild(store, stored)
            if example is None or example.content_hash != item.content_hash:
                changed += 1
            else:
                rows.append(to_row(example))
        done += len(batch)
        if progress is not None:
            progress(done, max(total, done))
        if rows:
            yield rows
    raise_if_changed(changed, done, "examples", total)


async def pair_rows(
    store: Store,
    name: str,
    split: Split | None,
    *,
    total: int,
    progress: Progress | None = None,
) -> AsyncIterator[list[Row]]:
    """One list of ``openai-dpo`` rows per stored batch of the dataset's preference pairs."""
    changed = done = 0
    async for batch in store.dataset_pairs(name, split):
        rows: list[Row] = []
        for pair, preferred, rejected in batch:
            row = await _pair_row(store, pair, preferred, rejected)
            if row is None:
                changed += 1
            else:
                rows.append(row)
        done += len(batch)
        if progress is not None:
            progress(done, max(total, done))
        if rows:
            yield rows
    raise_if_changed(changed, done, "preference pairs")


async def rebuild(
    store: Store, stored: StoredCapture | None, *, ignore_feedback: bool = False
) -> Example | None:
    """The capture's example as ``create_dataset`` builds it; None if gone or now rejected."""
    if stored is None:
        return None
    chain = None
    if stored.record.previous_response_id is not None:
        conversation = await store.conversation(stored.record.id)
        chain = conversation.captures if conversation is not None else None
    built = build_example(stored, chain, ignore_feedback=ignore_feedback)
    return built if isinstance(built, Example) else None


async def _pair_row(
    store: Store,
    pair: DatasetPair,
    preferred: StoredCapture | None,
    rejected: StoredCapture | None,
) -> Row | None:
    """The pair's DPO row; None when its captures no longer make the same pair."""
    better = await rebuild(store, preferred)
    if better is None:
        return None
    if pair.kind == "correction":
        # One capture: the operator's corrected answer over the teacher's original one.
        if not better.corrected or better.original_answer is None:
            return None
        return openai_dpo_row(better, better.messages[-1], better.original_answer)
    # Two captures of one prompt with opposite feedback; the worse one has negative feedback,
    # which is a rejection for training but exactly what the rejected side needs.
    worse = await rebuild(store, rejected, ignore_feedback=True)
    if (
        worse is None
        or worse.prompt_hash != better.prompt_hash
        or not _score(better) > 0 > _score(worse)
    ):
        return None
    return openai_dpo_row(better, better.messages[-1], worse.messages[-1])


def _score(example: Example) -> float:
    return example.feedback_score if example.feedback_score is not None else 0.0


def raise_if_changed(changed: int, done: int, what: str, expected: int | None = None) -> None:
    """``DatasetChanged`` if items changed, or if fewer than ``expected`` were found (the
    dataset was deleted while it was being read)."""
    if expected is not None and done < expected:
        raise DatasetChanged(
            f"only {done} of {expected} {what} were found: the dataset was deleted during the "
            "export"
        )
    if changed:
        raise DatasetChanged(
            f"{changed} of {done} {what} changed since the dataset was created (captures "
            "deleted or edited); create a new dataset to export the current captures"
        )
