"""Datasets: immutable, reproducible snapshots of captures chosen for training.

A dataset is created once from a ``DatasetSpec`` (a capture filter plus split, dedupe and token
options) by ``create_dataset``; it keeps the filter, the ordered list of capture ids with their
split and per-example content hash, counts, token statistics and the reasons captures were left
out (``Dataset``). It never changes afterwards; exports rebuild each example from its capture
and refuse to export one whose content no longer matches the snapshot (edited or deleted
since).

Determinism: examples are taken in the order captures were stored; a prompt's split is a
function of its ``prompt_hash`` (``--holdout-by hash``), so the same inputs give the same
splits, and identical prompts always land in the same split (no leakage by construction). With
``--holdout-by time`` the newest captures (by creation time) form the holdout, and a holdout
example whose prompt also occurs in train or validation is dropped (``leakage``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from storage.query import CaptureFilter, QueryError, filter_json, parse_filter

if TYPE_CHECKING:
    from storage._dataset_builder import Builder, Verdict
    from storage.base import Store

Split = Literal["train", "validation", "holdout"]
SPLITS: tuple[Split, ...] = ("train", "validation", "holdout")
HoldoutBy = Literal["hash", "time"]
Dedupe = Literal["exact", "near"]

DEFAULT_MAX_TOKENS = 65_536  # OpenAI's training example limit for gpt-4o / gpt-4o-mini
DEFAULT_PRICE_PER_MILLION = 3.0  # USD per 1M training tokens (gpt-4o-mini's list price)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def check_name(name: str) -> str:
    """Dataset names: 1-64 of a-z 0-9 - _ . starting with a letter or digit."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= 64
        or not set(name) <= _NAME_CHARS
        or not name[0].isalnum()
    ):
        raise ValueError(
            f"dataset name {name!r:.80} must be 1-64 characters of a-z, 0-9, '-', '_', '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    name: str
    where: CaptureFilter = field(default_factory=CaptureFilter)
    validation: float = 0.1  # share of examples in the validation split
    holdout: float = 0.0  # share in the holdout split
    holdout_by: HoldoutBy = "hash"
    dedupe: Dedupe = "exact"  # exact duplicates are always merged; "near" merges near ones too
    max_tokens: int = DEFAULT_MAX_TOKENS  # longer examples are dropped, never cut
    price_per_million: float = DEFAULT_PRICE_PER_MILLION  # for the cost estimate per epoch


@dataclass(frozen=True, slots=True)
class TokenStats:
    examples: int
    total: int
    min: int
    mean: float
    max: int
    p95: int
    answer_total: int  # tokens of the trained answers alone
    cost_per_epoch: float  # total / 1e6 * price_per_million

    def to_json(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "total": self.total,
            "min": self.min,
            "mean": self.mean,
            "max": self.max,
            "p95": self.p95,
            "answer_total": self.answer_total,
            "estimated_cost_per_epoch": self.cost_per_epoch,
        }


@dataclass(frozen=True, slots=True)
class Dataset:
    """A dataset's snapshot metadata (its items are stored beside it)."""

    name: str
    created_at: float
    spec: dict[str, Any]  # the DatasetSpec as JSON: filter and options
    content_hash: str  # sha256 over (split, example content hash) in order
    counts: dict[str, int]  # per split
    considered: int  # captures the filter matched
    rejected: dict[str, int]  # reason -> captures left out
    tokens: dict[str, TokenStats]  # per split
    leakage: dict[str, int]  # {"shared_prompts": 0 after the check, "removed": n}
    version: str  # Stillroom version that built it

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "dataset",
            "name": self.name,
            "created_at": self.created_at,
            "spec": self.spec,
            "content_hash": self.content_hash,
            "counts": self.counts,
            "considered": self.considered,
            "rejected": self.rejected,
            "tokens": {split: stats.to_json() for split, stats in self.tokens.items()},
            "leakage": self.leakage,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class DatasetItem:
    position: int  # 0-based, the export order
    capture_id: str
    split: Split
    content_hash: str  # Example.content_hash at snapshot time


PairKind = Literal["correction", "feedback"]


@dataclass(frozen=True, slots=True)
class DatasetPair:
    """A preference pair for ``openai-dpo``: the same prompt, a better and a worse answer.

    ``correction``: one capture, the operator's corrected answer preferred over the teacher's
    (``preferred_id == rejected_id``). ``feedback``: two captures of the same prompt, the one
    with positive feedback preferred over one with negative feedback.
    """

    position: int
    split: Split
    kind: PairKind
    preferred_id: str
    rejected_id: str


class DatasetExists(ValueError):
    """A dataset with this name exists already (datasets are immutable: pick a new name)."""


class DatasetChanged(ValueError):
    """A snapshot's capture was deleted or edited since the dataset was created."""


Progress = Callable[[int, int], None]  # (captures done, captures to do)


async def create_dataset(
    store: Store,
    spec: DatasetSpec,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
) -> Dataset:
    """Build and publish the dataset ``spec`` describes (see the module docstring).

    Raises ``DatasetExists`` if the name is taken and ``QueryError`` for a bad filter; a
    failure part way leaves nothing behind. Captures of a big build from a SQLite store are
    judged by worker processes (``storage._dataset_workers``); ``workers`` sets how many (1:
    none), None picks. The dataset is the same either way.
    """
    check_name(spec.name)
    total = await store.count(spec.where)
    cutoff = None
    if spec.holdout_by == "time" and spec.holdout > 0:
        cutoff = await store.time_quantile(spec.where, 1 - spec.holdout)
    from storage._dataset_builder import Builder
    from storage._dataset_workers import (
        MAX_BUILD_WORKERS,
        parallel_verdicts,
        sqlite_path,
        worker_count,
    )

    handle = await store.begin_dataset(spec.name)
    try:
        builder = Builder(spec, cutoff)
        done = 0
        path = sqlite_path(store)
        count = worker_count(total, workers, MAX_BUILD_WORKERS) if path is not None else 1
        batches = (
            parallel_verdicts(path, spec.where, spec.dedupe == "near", count)
            if path is not None and count > 1
            else _judged_here(store, spec, builder)
        )
        async for verdicts in batches:
            for verdict in verdicts:
                builder.accept(verdict)
            items, pairs = builder.take()
            await store.add_dataset_items(handle, items, pairs)
            done += len(verdicts)
            if progress is not None:
                progress(done, max(total, done))
        items, pairs = builder.finish()
        await store.add_dataset_items(handle, items, pairs)
        dataset = builder.dataset(considered=done)
        await store.finish_dataset(handle, dataset)
    except BaseException:
        await store.abort_dataset(handle)
        raise
    return dataset


async def _judged_here(
    store: Store, spec: DatasetSpec, builder: Builder
) -> AsyncIterator[list[Verdict]]:
    """The verdicts of the captures ``spec`` selects, judged in this process, batch by batch."""
    from storage._dataset_builder import BATCH, judge

    near = builder.seen_near if spec.dedupe == "near" else None
    async for batch in store.iter_captures(spec.where, batch=BATCH):
        verdicts: list[Verdict] = []
        for stored in batch:
            chain = None
            if stored.record.previous_response_id is not None:
                conversation = await store.conversation(stored.record.id)
                chain = conversation.captures if conversation else None
            # The builder has taken every earlier verdict: a known duplicate is not counted.
            verdicts.append(judge(stored, chain, seen=builder.seen_content, seen_near=near))
        yield verdicts


_SPEC_FIELDS = (
    "name",
    "filter",
    "validation",
    "holdout",
    "holdout_by",
    "dedupe",
    "max_tokens",
    "price_per_million",
)


def parse_spec(body: object) -> DatasetSpec:
    """A ``DatasetSpec`` from its JSON object (``POST /admin/datasets``); ``QueryError`` if bad.

    ``{"name": "summaries-v1", "filter": {"tag": ["task:summarize"], "model": "…"},
    "validation": 0.1, "holdout": 0.1, "holdout_by": "hash" | "time",
    "dedupe": "exact" | "near", "max_tokens": 65536, "price_per_million": 3.0}``;
    the filter takes the admin API's filter names (``storage.query.FILTER_PARAMS``), each a
    string or, for ``tag``, a list of strings.
    """
    if not isinstance(body, dict):
        raise QueryError("the body must be a JSON object")
    for key in body:
        if key not in _SPEC_FIELDS:
            raise QueryError(
                f"unknown field {key!r:.80}; known: {', '.join(_SPEC_FIELDS)}", param=key
            )
    if "name" not in body:
        raise QueryError("name is required", param="name")
    try:
        name = check_name(body["name"])
    except ValueError as exc:
        raise QueryError(str(exc), param="name") from None
    raw_filter = body.get("filter", {})
    if not isinstance(raw_filter, dict):
        raise QueryError("filter must be an object of filter names", param="filter")
    params: dict[str, list[str]] = {}
    for key, value in raw_filter.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str | int | float | bool) for v in values):
            raise QueryError(f"filter {key} must be a string or a list of strings", param=key)
        params[key] = [_filter_text(v) for v in values]
    where = parse_filter(params)
    validation = _share(body.get("validation", 0.1), "validation")
    holdout = _share(body.get("holdout", 0.0), "holdout")
    if validation + holdout >= 1:
        raise QueryError("validation + holdout must leave something to train on", param="holdout")
    holdout_by = body.get("holdout_by", "hash")
    if holdout_by not in ("hash", "time"):
        raise QueryError("holdout_by must be hash or time", param="holdout_by")
    dedupe = body.get("dedupe", "exact")
    if dedupe not in ("exact", "near"):
        raise QueryError("dedupe must be exact or near", param="dedupe")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= 10_000_000
    ):
        raise QueryError("max_tokens must be an integer 1-10000000", param="max_tokens")
    price = body.get("price_per_million", DEFAULT_PRICE_PER_MILLION)
    if isinstance(price, bool) or not isinstance(price, int | float) or not 0 <= price <= 1e6:
        raise QueryError("price_per_million must be a number 0-1000000", param="price_per_million")
    return DatasetSpec(
        name=name,
        where=where,
        validation=validation,
        holdout=holdout,
        holdout_by=holdout_by,
        dedupe=dedupe,
        max_tokens=max_tokens,
        price_per_million=float(price),
    )


def _filter_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _share(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise QueryError(f"{param} must be a number from 0 to below 1", param=param)
    return float(value)


def spec_json(spec: DatasetSpec) -> dict[str, Any]:
    """The spec as stored in the snapshot and shown by ``datasets show`` (filter as given)."""
    return {
        "name": spec.name,
        "filter": filter_json(spec.where),
        "validation": spec.validation,
        "holdout": spec.holdout,
        "holdout_by": spec.holdout_by,
        "dedupe": spec.dedupe,
        "max_tokens": spec.max_tokens,
        "price_per_million": spec.price_per_million,
    }
