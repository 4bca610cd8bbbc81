"""Dataset creation and export speed on a large store: the issue #5 targets.

    .venv/bin/python bench/dataset_throughput.py --db bench/out/query-latency.db [--workers N]

Uses a store built by ``bench/query_latency.py`` (1,000,000 chat captures by default; build it
first). Creates a dataset from every capture (validation 0.1, exact dedupe, default token
limit), then exports its train split as ``openai-chat`` JSONL, and reports examples per second
for each step and peak memory: the process's own (``VmHWM``) and, since a big export runs
worker processes (``storage._dataset_workers``), the peak of the whole process tree (the sum of
every process's resident memory, sampled every 0.1 s). Targets: at least 20,000 examples per
second, peak memory under 300 MB.

The export runs in a process of its own, as ``stillroom datasets export`` does after
``stillroom datasets create``; ``--one-process`` exports in the process that created, which
still holds the builder's memory and the tokenizer. ``--workers N`` sets each step's worker
processes (1: in process; default: the automatic choice). Each run creates a dataset with a
fresh name; ``--keep`` keeps it (by default it is deleted at the end). ``--create-only`` skips
the export; the create line also gives the CPU time of the process and of its workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from storage.datasets import DatasetSpec, create_dataset
from storage.export import export_dataset
from storage.query import CaptureFilter
from storage.sqlite import SQLiteStore


def peak_mb() -> float:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss``, it does not count
    the parent's memory a forked child held before it ran the export step's ``exec``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TreeMemory:
    """The peak of the summed resident memory of this process and its children."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, tree_rss())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def tree_rss() -> int:
    """Resident bytes of this process plus its direct children (worker processes)."""
    me = os.getpid()
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == me or ppid == me:
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return total


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("bench/out/query-latency.db"))
    parser.add_argument("--keep", action="store_true", help="keep the dataset afterwards")
    parser.add_argument("--workers", type=int, default=None, help="worker processes per step")
    parser.add_argument("--export-only", metavar="NAME", help="only export dataset NAME")
    parser.add_argument(
        "--one-process", action="store_true", help="export in the process that created"
    )
    parser.add_argument(
        "--create-only", action="store_true", help="create (and delete) the dataset, no export"
    )
    args = parser.parse_args()
    if not args.db.exists():
        raise SystemExit(f"{args.db} is missing: build it with bench/query_latency.py first")
    store = SQLiteStore(args.db)
    await store.migrate()
    try:
        if args.export_only:
            await export_step(store, args.export_only, args.workers)
            return
        await create_and_export(store, args)
    finally:
        await store.close()


async def create_and_export(store: SQLiteStore, args: argparse.Namespace) -> None:
    captures = await store.count()
    name = f"bench-{int(time.time())}"
    print(f"store: {captures:,} captures; start RSS peak {peak_mb():.0f} MB", flush=True)
    tree = TreeMemory()
    started, cpu = time.perf_counter(), os.times()
    dataset = await create_dataset(
        store, DatasetSpec(name=name, where=CaptureFilter()), workers=args.workers
    )
    create_s, after = time.perf_counter() - started, os.times()
    own = after.user - cpu.user + after.system - cpu.system
    workers = after.children_user - cpu.children_user + after.children_system - cpu.children_system
    print(
        f"create: {dataset.considered:,} captures -> {sum(dataset.counts.values()):,} examples"
        f" in {create_s:.1f} s = {dataset.considered / create_s:,.0f} captures/s;"
        f" CPU {own:.1f} s in this process, {workers:.1f} s in its workers;"
        f" peak RSS {peak_mb():.0f} MB, with its worker processes {tree.stop():.0f} MB;"
        f" rejected {dataset.rejected}",
        flush=True,
    )
    try:
        if args.create_only:
            pass
        elif args.one_process:
            await export_step(store, name, args.workers)
        else:
            # As `stillroom datasets create` and `... export` run: each step its own process.
            command = [sys.executable, __file__, "--db", str(args.db), "--export-only", name]
            if args.workers is not None:
                command += ["--workers", str(args.workers)]
            subprocess.run(command, check=True)
    finally:
        if not args.keep:
            await store.delete_dataset(name)


async def export_step(store: SQLiteStore, name: str, workers: int | None) -> None:
    dataset = await store.get_dataset(name)
    if dataset is None:
        raise SystemExit(f"no dataset {name!r}")
    tree = TreeMemory()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "train.jsonl"
        started = time.perf_counter()
        manifest = await export_dataset(store, name, "openai-chat", "train", out, workers=workers)
        export_s = time.perf_counter() - started
        lines = dataset.counts["train"]
        size = os.path.getsize(out)
        assert manifest["lines"] == lines, manifest
    print(
        f"export openai-chat train: {lines:,} lines, {size / 2**20:,.0f} MiB in"
        f" {export_s:.1f} s = {lines / export_s:,.0f} examples/s; peak RSS {peak_mb():.0f} MB,"
        f" with its worker processes {tree.stop():.0f} MB (target < 300 MB)",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
