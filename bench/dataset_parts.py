"""Two parts of a dataset build, alone: token counting and the builder's key sets (issue #5).

    .venv/bin/python bench/dataset_parts.py [--texts 2000] [--keys 1000000]

* Token counts of 40-word answers of random letter words (the shape of
  ``bench/query_latency.py``'s captures): tiktoken's ``encode_ordinary`` against
  ``storage._token_pieces.PieceCounter`` (its regex alone too), µs per text, after one warm-up
  pass (so the piece memo holds the vocabulary, as it does a few thousand captures into a
  build). The counts are checked equal.
* ``storage._keyset.KeySet`` with N random 64-bit keys: µs for a lookup and an insert per key,
  and the memory it holds (tracemalloc, in a second pass: tracing slows it down).
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

from storage._keyset import KeySet
from storage.tokens import get_encoding, piece_counter


def per_call_us(fn, items: list, rounds: int = 5) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        for item in items:
            fn(item)
    return (time.perf_counter() - started) / rounds / len(items) * 1e6


def tokens(n: int) -> None:
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(5000)]
    texts = ["Certainly. " + " ".join(rng.choices(words, k=40)) for _ in range(n)]
    encoding = get_encoding("o200k_base")
    counter = piece_counter("o200k_base")
    for text in texts:  # warm-up, and the counts agree
        assert counter(text) == len(encoding.encode_ordinary(text))
    findall = counter._findall
    assert findall is not None
    print(f"token counts, {n:,} 40-word answers (o200k_base), µs per text:")
    print(f"  tiktoken encode_ordinary  {per_call_us(encoding.encode_ordinary, texts):6.2f}")
    print(f"  PieceCounter              {per_call_us(counter, texts):6.2f}")
    print(f"  its regex alone           {per_call_us(findall, texts):6.2f}")


def keys(n: int) -> None:
    rng = random.Random(1)
    values = [rng.getrandbits(64) for _ in range(n)]

    def fill() -> KeySet:
        found = KeySet()
        for key in values:
            if key not in found:
                found.add(key)
        return found

    started = time.perf_counter()
    filled = fill()
    elapsed = time.perf_counter() - started
    assert len(filled) == len(set(values))
    del filled
    tracemalloc.start()
    filled = fill()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(filled) == len(set(values))
    print(
        f"KeySet, {n:,} random keys: {elapsed / n * 1e6:.2f} µs a lookup and an insert;"
        f" {held / 1e6:.1f} MB held ({held / n:.1f} bytes a key), peak {peak / 1e6:.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    tokens(args.texts)
    keys(args.keys)


if __name__ == "__main__":
    main()
