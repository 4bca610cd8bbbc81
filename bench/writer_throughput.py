"""Capture storage benchmark: records/s the SQLite store and the writer sustain, bytes per capture.

Usage: .venv/bin/python bench/writer_throughput.py [--records 20000] [--rounds 3] [--json FILE]

Workloads (about 4 KB per record: a 2 KB system prompt, a 0.5 KB user message, a 1.5 KB JSON
response with its reassembled object):

* ``unique``  every request has its own system prompt: nothing to share (the worst case);
* ``shared``  every request carries the same system prompt (the usual production shape).

Measures, each round on a fresh database file:

1. store alone: ``SQLiteStore.write_batch`` in batches of 200, one after the other;
2. writer + store: every record submitted to a ``CaptureWriter`` at once, then ``stop()``
   (which drains the queue): records / (time from first submit to stop returning);
   with deferred indexing (SQLite's default) the proxy's side is instead
   2a. spool: the same with the records packed as the proxy packs them, appended to the
       store's spool (``append_spool``);
   2b. indexer: the indexer's ``step`` over a spool of all the records until it is empty
       (building the records from the frames, storing them, recording the position);
3. bytes on disk per capture for 50 requests sharing one 2 KB system prompt (database pages in
   use after a WAL checkpoint, minus those of the empty migrated database, divided by 50).

Prints the median and best of the rounds, the CPU time per record and the load average, since
this machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy import frames  # noqa: E402
from proxy.indexer import INDEXED, IndexerOptions, _Indexer  # noqa: E402
from proxy.records import ExchangeCopy  # noqa: E402
from proxy.writer import CaptureWriter  # noqa: E402
from storage import spool  # noqa: E402
from storage.connect import open_store  # noqa: E402
from storage.ids import new_capture_id  # noqa: E402
from storage.models import CaptureRecord, Usage  # noqa: E402
from storage.sqlite import SQLiteStore  # noqa: E402

BATCH = 200
WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people my than first "
    "water been call who oil its now find long down day did get come made may part answer "
    "always customer summary json schema tool function assistant system user careful concise "
    "please return only valid output field value reason example policy refund order account"
).split()


class Corpus:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self, n: int) -> str:
        words: list[str] = []
        size = 0
        while size < n:
            word = self.rng.choice(WORDS)
            words.append(word)
            size += len(word) + 1
        return " ".join(words)[:n]

    def record(self, system: str | None) -> CaptureRecord:
        prompt = system if system is not None else self.text(2048)
        request = orjson.dumps(
            {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": prompt},
                    {"role": "user", "content": self.text(500)},
                ],
                "temperature": 0.2,
            }
        )
        cid = new_capture_id()
        response = {
            "id": f"chatcmpl-{cid[-12:]}",
            "object": "chat.completion",
            "created": 1_760_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text(1250)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 640, "completion_tokens": 300, "total_tokens": 940},
        }
        return CaptureRecord(
            id=cid,
            created_at=time.time(),
            endpoint="chat/completions",
            method="POST",
            path="/v1/chat/completions",
            requested_model="gpt-4o-mini",
            returned_model="gpt-4o-mini-2024-07-18",
            stream=False,
            request_body=request,
            response_body=orjson.dumps(response),
            response_truncated=False,
            response_content_type="application/json",
            response=response,
            status=200,
            outcome="completed",
            error=None,
            latency_ms=812.5,
            ttft_ms=790.0,
            usage=Usage(640, 300, 940),
            tags={"team": "search", "task": "summarize"},
            upstream_request_id=f"req_{cid[-8:]}",
            retry_count=0,
            key_fingerprint="fp_1a2b3c4d",
            response_id=response["id"],  # type: ignore[arg-type]
            previous_response_id=None,
            has_tool_calls=False,
        )

    def records(self, n: int, shared: bool) -> list[CaptureRecord]:
        system = self.text(2048) if shared else None
        return [self.record(system) for _ in range(n)]


@contextlib.asynccontextmanager
async def bench_store(target: Path | str) -> AsyncIterator[Any]:
    """A migrated store: SQLite at the path, or a fresh schema of the Postgres URL (dropped)."""
    if isinstance(target, Path):
        async with SQLiteStore(target) as store:
            await store.migrate()
            yield store
        return
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(target)
    await admin.execute(f"CREATE SCHEMA {schema}")
    store = open_store(f"{target}?search_path={schema}")
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def fresh_path(workdir: Path, name: str) -> Path:
    path = workdir / name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(spool.spool_dir(str(path)), ignore_errors=True)
    return path


async def store_alone(path: Path | str, records: list[CaptureRecord]) -> tuple[float, float]:
    async with bench_store(path) as store:
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, len(records), BATCH):
            await store.write_batch(records[start : start + BATCH])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert await store.count() == len(records)
    return len(records) / wall, cpu / len(records) * 1e6


async def writer_and_store(path: Path | str, records: list[CaptureRecord]) -> tuple[float, float]:
    async with bench_store(path) as store:
        writer = CaptureWriter(
            store,
            max_queue=len(records),
            max_queue_bytes=1 << 34,
            batch_size=BATCH,
            flush_interval=0.1,
            logger=logging.getLogger("bench.writer"),
        )
        await writer.start()
        cpu, wall = time.process_time(), time.perf_counter()
        for record in records:
            writer.submit(record)
        await writer.stop(deadline_s=600)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert writer.written_total == len(records), writer.dropped_total
    return len(records) / wall, cpu / len(records) * 1e6


def packed(records: list[CaptureRecord]) -> list[bytes]:
    """The records as the proxy spools them with deferred indexing (``proxy.frames``)."""
    return [
        frames.encode(
            ExchangeCopy(
                capture_id=r.id,
                created_at=r.created_at,
                endpoint=r.endpoint,
                method=r.method,
                path=r.path,
                request_body=r.request_body,
                response_body=r.response_body,
                response_truncated=r.response_truncated,
                status=r.status,
                content_type=r.response_content_type,
                content_encoding=None,
                outcome=r.outcome,
                error=r.error,
                latency_ms=r.latency_ms,
                ttft_ms=r.ttft_ms,
                tags=dict(r.tags),
                upstream_request_id=r.upstream_request_id,
                retry_count=r.retry_count,
                key_fingerprint=r.key_fingerprint,
            )
        )
        for r in records
    ]


async def writer_and_spool(path: Path | str, records: list[CaptureRecord]) -> tuple[float, float]:
    """Deferred indexing, the proxy's side: the writer appending packed exchanges to the spool."""
    assert isinstance(path, Path)
    items = packed(records)
    async with bench_store(path) as store:
        writer = CaptureWriter(
            store,
            max_queue=len(items),
            max_queue_bytes=1 << 34,
            batch_size=BATCH,
            flush_interval=0.1,
            logger=logging.getLogger("bench.writer"),
            write=store.append_spool,
        )
        await writer.start()
        cpu, wall = time.process_time(), time.perf_counter()
        for item in items:
            writer.submit(item)
        await writer.stop(deadline_s=600)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert writer.written_total == len(items), writer.dropped_total
    return len(items) / wall, cpu / len(items) * 1e6


async def indexer_alone(path: Path | str, records: list[CaptureRecord]) -> tuple[float, float]:
    """Deferred indexing, the indexer's side: spooled exchanges built and stored as captures."""
    assert isinstance(path, Path)
    async with bench_store(path):
        pass
    writer = spool.SpoolWriter(spool.spool_dir(str(path)))
    items = packed(records)
    for start in range(0, len(items), BATCH):
        writer.append(items[start : start + BATCH])
    writer.close()
    counters = [0] * 8
    indexer = _Indexer(IndexerOptions(path=str(path), batch_size=BATCH), counters)
    cpu, wall = time.process_time(), time.perf_counter()
    while indexer.step():
        pass
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    indexer.close()
    assert counters[INDEXED] == len(records), counters
    shutil.rmtree(spool.spool_dir(str(path)), ignore_errors=True)
    return len(records) / wall, cpu / len(records) * 1e6


def pages_in_use(path: Path) -> int:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


async def bytes_per_capture(path: Path, corpus: Corpus, n: int = 50) -> dict[str, float]:
    records = corpus.records(n, shared=True)
    async with SQLiteStore(path) as store:
        await store.migrate()
    empty = pages_in_use(path)
    async with SQLiteStore(path) as store:
        await store.write_batch(records)
    used = pages_in_use(path) - empty
    with sqlite3.connect(path) as db:
        blobs = db.execute("SELECT coalesce(sum(length(data)), 0) FROM blobs").fetchone()[0]
        refs = db.execute("SELECT sum(length(request_manifest)) FROM captures").fetchone()[0]
    return {
        "raw_bytes_per_capture": sum(len(r.request_body) + len(r.response_body) for r in records)
        / n,
        "raw_request_bytes_per_capture": sum(len(r.request_body) for r in records) / n,
        "stored_request_bytes_per_capture": (blobs + refs) / n,
        "disk_bytes_per_capture": used / n,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "best": max(values), "worst": min(values)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the database files go")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also measure PostgresStore at this server (each round in a fresh schema), "
        "e.g. postgresql://postgres@127.0.0.1/test",
    )
    args = parser.parse_args()
    corpus = Corpus(seed=42)
    data = {
        "unique": corpus.records(args.records, False),
        "shared": corpus.records(args.records, True),
    }
    size = statistics.mean(len(r.request_body) + len(r.response_body) for r in data["unique"])
    results: dict[str, Any] = {
        "records": args.records,
        "batch": BATCH,
        "bytes_per_record": round(size),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
    }
    with tempfile.TemporaryDirectory(prefix="stillroom-writer-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        backends: list[tuple[str, Any]] = [("", lambda: fresh_path(workdir, "bench.db"))]
        if args.postgres:
            backends.append(("postgres ", lambda: args.postgres))
        for (backend, target), (workload, records) in itertools.product(backends, data.items()):
            benches: list[tuple[str, Any]] = [("store", store_alone), ("writer", writer_and_store)]
            if not backend:  # deferred indexing is SQLite's
                benches += [("spool", writer_and_spool), ("indexer", indexer_alone)]
            for name, bench in benches:
                rates, cpus = [], []
                for _ in range(args.rounds):
                    rate, cpu = await bench(target(), records)
                    rates.append(rate)
                    cpus.append(cpu)
                key = f"{backend.strip() + '_' if backend else ''}{name}_{workload}"
                results[f"{key}_records_per_s"] = summary(rates)
                results[f"{key}_cpu_us_per_record"] = statistics.median(cpus)
                print(
                    f"{backend}{name:>7} {workload:>6}: {statistics.median(rates):8.0f} "
                    "records/s median "
                    f"(best {max(rates):.0f}, worst {min(rates):.0f}), "
                    f"{statistics.median(cpus):.0f} µs CPU per record",
                    flush=True,
                )
        disk = await bytes_per_capture(fresh_path(workdir, "disk.db"), Corpus(seed=7))
    results.update({k: round(v) for k, v in disk.items()})
    results["loadavg_after"] = os.getloadavg()
    print(
        f"50 requests sharing one 2 KB system prompt: {disk['disk_bytes_per_capture']:.0f} bytes "
        f"on disk per capture (raw request + response {disk['raw_bytes_per_capture']:.0f}; "
        f"request {disk['raw_request_bytes_per_capture']:.0f} raw -> "
        f"{disk['stored_request_bytes_per_capture']:.0f} stored)"
    )
    print(f"record size {size:.0f} B, batch {BATCH}, load average {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
