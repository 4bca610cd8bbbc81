"""The streaming state of one dataset build (private to ``storage.datasets``).

``judge`` turns one capture into a compact verdict (the example's gates and token counts, in
this process or in a worker process: ``storage._dataset_workers``); ``Builder.accept`` takes the
verdicts in stored order: exact and near duplicates, the token limit and the split (with the
leakage rule for a holdout by time). Items and preference pairs are handed out in batches
(``take``), so a build of any size keeps only compact sets of hashes (``KeySet``) and the token
counts in memory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import time
from array import array
from collections import Counter
from collections.abc import Container
from typing import NamedTuple

from storage._keyset import KeySet
from storage.datasets import (
    SPLITS,
    Dataset,
    DatasetItem,
    DatasetPair,
    DatasetSpec,
    PairKind,
    Split,
    TokenStats,
    spec_json,
)
from storage.examples import Example, Rejection, build_example
from storage.query import StoredCapture
from storage.tokens import example_tokens

BATCH = 500  # captures read, judged and stored per step


class Judged(NamedTuple):
    """A capture's example reduced to what the builder keeps of it (a worker process sends
    these: ``storage._dataset_workers``)."""

    capture_id: str
    created_at: float
    content_hash: str
    prompt_hash: str
    near_key: str | None  # only for near-duplicate dedupe
    size: int  # tokens of the whole example
    answer_tokens: int
    correction: bool  # an operator's correction with the teacher's answer: a preference pair
    feedback_score: float | None


class Rejected(NamedTuple):
    reason: str  # one of storage.examples.REASONS
    negative: tuple[str, str] | None = None  # negative feedback: (prompt hash, capture id)


Verdict = Judged | Rejected


def judge(
    stored: StoredCapture,
    chain: list[StoredCapture] | None,
    *,
    near: bool = False,
    seen: Container[int] | None = None,
    seen_near: Container[int] | None = None,
) -> Verdict:
    """One capture's verdict: the example's gates and its token counts.

    ``seen`` and ``seen_near`` (the builder's, when it judges in process) skip the counting of
    an example already known to be a duplicate; ``seen_near`` (or ``near``) asks for the near
    key. Pure: the same capture gives the same verdict in any process.
    """
    built = build_example(stored, chain)
    if isinstance(built, Rejection):
        negative = None
        if built.reason == "negative_feedback":
            other = build_example(stored, chain, ignore_feedback=True)
            if isinstance(other, Example):
                negative = (other.prompt_hash, other.capture_id)
        return Rejected(built.reason, negative)
    if seen is not None and int(built.content_hash[:16], 16) in seen:
        return Rejected("duplicate")
    near_key = built.near_key if near or seen_near is not None else None
    if seen_near is not None and near_key is not None and int(near_key[:16], 16) in seen_near:
        return Rejected("near_duplicate")
    size, answer_tokens = example_tokens(built.messages, built.tools, built.model)
    return Judged(
        built.capture_id,
        built.created_at,
        built.content_hash,
        built.prompt_hash,
        near_key,
        size,
        answer_tokens,
        built.corrected and built.original_answer is not None,
        built.feedback_score,
    )


class Builder:
    """The streaming state of one dataset build: gates, dedupe, splits, pairs, statistics."""

    def __init__(self, spec: DatasetSpec, cutoff: float | None) -> None:
        self.spec = spec
        self.cutoff = cutoff
        self.position = 0
        self.items: list[DatasetItem] = []
        self.pairs: list[DatasetPair] = []
        self.pair_position = 0
        self.rejected: Counter[str] = Counter()
        # 64-bit keys of every example kept (and of prompts, for a holdout by time): compact
        # sets, since a build keeps them for every capture it reads
        self.seen_content = KeySet()
        self.seen_near = KeySet()
        self.prompts_by_split = {"holdout": KeySet(), "other": KeySet()}
        self.leakage_removed = 0
        self.tokens: dict[str, array[int]] = {split: array("l") for split in SPLITS}
        self.answer_tokens: dict[str, int] = dict.fromkeys(SPLITS, 0)
        self.digest = hashlib.sha256()
        # preference pairs by feedback: prompt -> (capture id, split) of the first positive
        # example kept, and prompt -> first capture id rejected for negative feedback
        self.positive: dict[str, tuple[str, Split]] = {}
        self.negative: dict[str, str] = {}
        within = 1 - spec.holdout if cutoff is not None else 1.0
        self.validation_share = spec.validation / within if within > 0 else 0.0

    def accept(self, verdict: Verdict) -> None:
        """Take one capture's verdict, in stored order: duplicates, the token limit, the split."""
        if isinstance(verdict, Rejected):
            self.rejected[verdict.reason] += 1
            if verdict.negative is not None:
                self.negative.setdefault(*verdict.negative)
            return
        content = int(verdict.content_hash[:16], 16)
        if content in self.seen_content:
            self.rejected["duplicate"] += 1
            return
        near: int | None = None
        if verdict.near_key is not None:
            near = int(verdict.near_key[:16], 16)
            if near in self.seen_near:
                self.rejected["near_duplicate"] += 1
                return
        if verdict.size > self.spec.max_tokens:
            self.rejected["too_long"] += 1
            return
        split = self._split(verdict)
        if split is None:
            self.rejected["leakage"] += 1
            self.leakage_removed += 1
            return
        self.seen_content.add(content)
        if near is not None:
            self.seen_near.add(near)
        self.tokens[split].append(verdict.size)
        self.answer_tokens[split] += verdict.answer_tokens
        self.digest.update(f"{split}:{verdict.content_hash}\n".encode())
        self.items.append(
            DatasetItem(self.position, verdict.capture_id, split, verdict.content_hash)
        )
        self.position += 1
        if verdict.correction:
            self._pair(split, "correction", verdict.capture_id, verdict.capture_id)
        if verdict.feedback_score is not None and verdict.feedback_score > 0:
            self.positive.setdefault(verdict.prompt_hash, (verdict.capture_id, split))

    def _split(self, example: Judged) -> Split | None:
        """The example's split; None when keeping it would leak a prompt across splits."""
        spec = self.spec
        share = int(example.prompt_hash[:8], 16) / 2**32
        prompt = int(example.prompt_hash[:16], 16)
        if self.cutoff is None:
            if share < spec.holdout:
                return "holdout"
            return "validation" if share < spec.holdout + spec.validation else "train"
        # By time: the newest captures are the holdout; a prompt never crosses that line.
        if example.created_at >= self.cutoff:
            if prompt in self.prompts_by_split["other"]:
                return None
            self.prompts_by_split["holdout"].add(prompt)
            return "holdout"
        if prompt in self.prompts_by_split["holdout"]:
            return None
        self.prompts_by_split["other"].add(prompt)
        rescaled = int(example.prompt_hash[8:16], 16) / 2**32
        return "validation" if rescaled < self.validation_share else "train"

    def _pair(self, split: Split, kind: PairKind, preferred: str, rejected: str) -> None:
        self.pairs.append(DatasetPair(self.pair_position, split, kind, preferred, rejected))
        self.pair_position += 1

    def take(self) -> tuple[list[DatasetItem], list[DatasetPair]]:
        items, pairs = self.items, self.pairs
        self.items, self.pairs = [], []
        return items, pairs

    def finish(self) -> tuple[list[DatasetItem], list[DatasetPair]]:
        """The feedback pairs (known once every capture was seen) and what is left."""
        for prompt, (preferred, split) in sorted(self.positive.items(), key=lambda kv: kv[1][0]):
            rejected = self.negative.get(prompt)
            if rejected is not None:
                self._pair(split, "feedback", preferred, rejected)
        return self.take()

    def dataset(self, *, considered: int) -> Dataset:
        return Dataset(
            name=self.spec.name,
            created_at=time.time(),
            spec=spec_json(self.spec),
            content_hash=self.digest.hexdigest(),
            counts={split: len(self.tokens[split]) for split in SPLITS},
            considered=considered,
            rejected=dict(sorted(self.rejected.items())),
            tokens={split: self._stats(split) for split in SPLITS},
            leakage={"shared_prompts": 0, "removed": self.leakage_removed},
            version=_version(),
        )

    def _stats(self, split: Split) -> TokenStats:
        sizes = sorted(self.tokens[split])
        total = sum(sizes)
        n = len(sizes)
        return TokenStats(
            examples=n,
            total=total,
            min=sizes[0] if sizes else 0,
            mean=round(total / n, 2) if n else 0.0,
            max=sizes[-1] if sizes else 0,
            p95=sizes[min(n - 1, math.ceil(0.95 * n) - 1)] if sizes else 0,
            answer_total=self.answer_tokens[split],
            cost_per_epoch=round(total / 1e6 * self.spec.price_per_million, 4),
        )


def _version() -> str:
    try:
        return importlib.metadata.version("stillroom")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
