"""The streaming state of one dataset build (private to ``storage.datasets``).

``Builder.add`` judges one capture: the example's gates, exact and near duplicates, the token
limit and the split (with the leakage rule for a holdout by time); items and preference pairs
are handed out in batches (``take``) so a build of any size keeps only compact sets of hashes
and the token counts in memory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import time
from array import array
from collections import Counter

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
from storage.tokens import count_answer, count_example

BATCH = 500  # captures read, judged and stored per step


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
        self.seen_content: set[int] = set()
        self.seen_near: set[int] = set()
        self.prompts_by_split: dict[str, set[int]] = {"holdout": set(), "other": set()}
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

    def add(self, stored: StoredCapture, chain: list[StoredCapture] | None) -> None:
        built = build_example(stored, chain)
        if isinstance(built, Rejection):
            self.rejected[built.reason] += 1
            if built.reason == "negative_feedback":
                other = build_example(stored, chain, ignore_feedback=True)
                if isinstance(other, Example):
                    self.negative.setdefault(other.prompt_hash, other.capture_id)
            return
        example = built
        content = int(example.content_hash[:16], 16)
        if content in self.seen_content:
            self.rejected["duplicate"] += 1
            return
        if self.spec.dedupe == "near":
            near = int(example.near_key[:16], 16)
            if near in self.seen_near:
                self.rejected["near_duplicate"] += 1
                return
        model = example.model
        size = count_example(example.messages, example.tools, model)
        if size > self.spec.max_tokens:
            self.rejected["too_long"] += 1
            return
        split = self._split(example)
        if split is None:
            self.rejected["leakage"] += 1
            self.leakage_removed += 1
            return
        self.seen_content.add(content)
        if self.spec.dedupe == "near":
            self.seen_near.add(int(example.near_key[:16], 16))
        self.tokens[split].append(size)
        self.answer_tokens[split] += count_answer(example.messages[-1], model)
        self.digest.update(f"{split}:{example.content_hash}\n".encode())
        self.items.append(
            DatasetItem(self.position, example.capture_id, split, example.content_hash)
        )
        self.position += 1
        if example.corrected and example.original_answer is not None:
            self._pair(split, "correction", example.capture_id, example.capture_id)
        if example.feedback_score is not None and example.feedback_score > 0:
            self.positive.setdefault(example.prompt_hash, (example.capture_id, split))

    def _split(self, example: Example) -> Split | None:
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
