"""Dataset creation and export speed on a large store: the issue #5 targets.

    .venv/bin/python bench/dataset_throughput.py --db bench/out/query-latency.db [--limit N]

Uses a store built by ``bench/query_latency.py`` (1,000,000 chat captures by default; build it
first). Creates a dataset from every capture (validation 0.1, exact dedupe, default token
limit), then exports its train split as ``openai-chat`` JSONL, and reports examples per second
for each step and the process's peak memory (``ru_maxrss``). Targets: at least 20,000 examples
per second, peak memory under 300 MB. Each run creates a dataset with a fresh name; ``--keep``
keeps it (by default it is deleted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from pathlib import Path

from storage.datasets import DatasetSpec, create_dataset
from storage.export import export_dataset
from storage.query import CaptureFilter
from storage.sqlite import SQLiteStore


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("bench/out/query-latency.db"))
    parser.add_argument("--keep", action="store_true", help="keep the dataset afterwards")
    args = parser.parse_args()
    if not args.db.exists():
        raise SystemExit(f"{args.db} is missing: build it with bench/query_latency.py first")
    store = SQLiteStore(args.db)
    await store.migrate()
    captures = await store.count()
    name = f"bench-{int(time.time())}"
    print(f"store: {captures:,} captures; start RSS peak {peak_mb():.0f} MB", flush=True)

    started = time.perf_counter()
    dataset = await create_dataset(store, DatasetSpec(name=name, where=CaptureFilter()))
    create_s = time.perf_counter() - started
    print(
        f"create: {dataset.considered:,} captures -> {sum(dataset.counts.values()):,} examples"
        f" in {create_s:.1f} s = {dataset.considered / create_s:,.0f} captures/s;"
        f" peak RSS {peak_mb():.0f} MB; rejected {dataset.rejected}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "train.jsonl"
        started = time.perf_counter()
        manifest = await export_dataset(store, name, "openai-chat", "train", out)
        export_s = time.perf_counter() - started
        lines = dataset.counts["train"]
        size = os.path.getsize(out)
        print(
            f"export openai-chat train: {lines:,} lines, {size / 2**20:,.0f} MiB in"
            f" {export_s:.1f} s = {lines / export_s:,.0f} examples/s; peak RSS {peak_mb():.0f} MB",
            flush=True,
        )
        assert manifest["lines"] == lines, manifest
    if not args.keep:
        await store.delete_dataset(name)
    await store.close()
    print(f"peak RSS over the run: {peak_mb():.0f} MB (target < 300 MB)")


if __name__ == "__main__":
    asyncio.run(main())
