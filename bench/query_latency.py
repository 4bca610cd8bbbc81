"""Browse latency on a large store: the issue #4 targets.

    .venv/bin/python bench/query_latency.py --captures 1000000 [--db PATH] [--runs 21]

Builds (or reuses, with ``--db``) a SQLite store of N chat captures written through the real
store (``SQLiteStore.write_batch``: content-addressed blobs, tags, full-text index), shaped like
traffic: one shared 2 KB system prompt, a user question and an answer drawn from a
5,000-word vocabulary, tags ``task`` (20 values) and ``team`` (5 values), three models. Then it
times, as medians and p99 over ``--runs`` repetitions through the store API (decode included):

* the first page (50) filtered by one tag — target < 50 ms;
* the same, one page deep (cursor);
* a full-text search for a rare word (~0.01 % of captures), a medium one (~1 %), a word in
  every answer and a word in none (every index partition searched) — target < 200 ms;
* the first page with no filter, one capture by id, and stats over everything;
* one hard delete (row, tags, blobs, index entries, index rewrite, WAL truncate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path

from storage.ids import new_capture_id
from storage.models import CaptureRecord, Usage
from storage.query import CaptureFilter, parse_filter
from storage.sqlite import SQLiteStore

SYSTEM = ("You are a careful assistant for the support team. Answer in two sentences. " * 28)[:2048]
MODELS = ("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-nano")


def vocabulary(rng: random.Random, size: int = 5000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))))
    return sorted(words)


def make(rng: random.Random, words: list[str], i: int, created: float) -> CaptureRecord:
    question = " ".join(rng.choices(words[100:], k=25))
    if i % 10_000 == 0:
        question += " quokkarare"
    if i % 100 == 0:
        question += " wombatmedium"
    answer = "Certainly. " + " ".join(rng.choices(words[100:], k=40))
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ],
        }
    ).encode()
    response = {
        "id": f"chatcmpl-{i:012d}",
        "object": "chat.completion",
        "created": int(created),
        "model": MODELS[i % 3],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 500, "completion_tokens": 60, "total_tokens": 560},
    }
    return CaptureRecord(
        id=new_capture_id(),
        created_at=created,
        endpoint="chat/completions",
        method="POST",
        path="/v1/chat/completions",
        requested_model="gpt-4o-mini",
        returned_model=MODELS[i % 3],
        stream=False,
        request_body=body,
        response_body=json.dumps(response).encode(),
        response_truncated=False,
        response_content_type="application/json",
        response=response,
        status=200,
        outcome="completed",
        error=None,
        latency_ms=800.0,
        ttft_ms=790.0,
        usage=Usage(500, 60, 560),
        tags={"task": f"task{i % 20}", "team": f"team{i % 5}"},
        upstream_request_id=f"req_{i}",
        retry_count=0,
        key_fingerprint="kf_bench",
        response_id=response["id"],
        previous_response_id=None,
        has_tool_calls=False,
    )


async def build(store: SQLiteStore, n: int) -> None:
    rng = random.Random(7)
    words = vocabulary(rng)
    start = time.perf_counter()
    batch: list[CaptureRecord] = []
    base = time.time() - n * 0.05
    for i in range(n):
        batch.append(make(rng, words, i, base + i * 0.05))
        if len(batch) == 1000:
            await store.write_batch(batch)
            batch.clear()
            if (i + 1) % 100_000 == 0:
                rate = (i + 1) / (time.perf_counter() - start)
                print(f"  {i + 1:,} written ({rate:,.0f}/s)", flush=True)
    if batch:
        await store.write_batch(batch)


async def timed(runs: int, fn) -> tuple[float, float, object]:
    samples = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = await fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]
    return statistics.median(samples), p99, result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captures", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path("bench/out/query-latency.db"))
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    args.db.parent.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(args.db)
    await store.migrate()
    have = await store.count()
    if have < args.captures:
        print(f"building {args.captures - have:,} captures in {args.db} ...", flush=True)
        await build(store, args.captures - have)
    total = await store.count()
    size = sum(
        os.path.getsize(str(args.db) + s) for s in ("", "-wal") if os.path.exists(str(args.db) + s)
    )
    print(f"store: {total:,} captures, {size / 2**20:,.0f} MiB on disk")
    print()
    print("| query | median ms | p99 ms | rows | target |")
    print("|---|---:|---:|---:|---|")

    async def row(name: str, fn, target: str = "", runs: int = args.runs) -> object:
        median, p99, result = await timed(runs, fn)
        rows = len(result.items) if hasattr(result, "items") else ""
        print(f"| {name} | {median:.1f} | {p99:.1f} | {rows} | {target} |", flush=True)
        return result

    one_tag = parse_filter({"tag": ["task:task7"]})
    first = await row("first page (50), one tag", lambda: store.list_captures(one_tag), "< 50 ms")
    after = first.last_id  # type: ignore[attr-defined]
    await row("second page (50), one tag", lambda: store.list_captures(one_tag, after=after))
    two_tags = parse_filter({"tag": ["task:task7", "team:team2"]})
    await row("first page, two tags", lambda: store.list_captures(two_tags))
    for word, label in (
        ("quokkarare", "rare word (0.01 %)"),
        ("wombatmedium", "medium word (1 %)"),
        ("certainly", "word in every answer"),
        ("xylophonenever", "word in no capture"),
    ):
        where = CaptureFilter(search=word)
        await row(f"search, {label}", lambda w=where: store.list_captures(w), "< 200 ms")
    await row("first page, no filter", lambda: store.list_captures(CaptureFilter()))
    await row(
        "first page, model filter",
        lambda: store.list_captures(parse_filter({"model": ["gpt-4.1-nano"]})),
    )
    some_id = after
    await row("get one capture by id", lambda: store.get_capture(some_id))
    await row("stats over all captures", lambda: store.stats(), runs=3)
    victim = (await store.list_captures(CaptureFilter(), limit=1)).items[0].record.id
    await row("hard delete of one capture", lambda: store.delete_capture(victim), runs=1)
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
