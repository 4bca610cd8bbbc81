"""T16 soak: `stillroom serve` (capture on) in front of `stillroom mock` under steady mixed load.

    .venv/bin/python bench/soak.py              # the 10-minute run of reliability.md T16
    .venv/bin/python bench/soak.py --minutes 2  # a shorter look

Load: 20 concurrent streams (40 chunks, 50 ms apart: about 2 s each) plus 20 non-streamed
requests per second; 10% of the streams are abandoned by their client half-way. Every 5 s it
samples the proxy's RSS, open FDs and the WAL file size, and the RSS of its helper processes
(the capture indexer and its fork server) and the spool's size. Pass criteria (T16): RSS slope
from minute 2 on ≤ 1 MiB/min (and ≤ 10 MiB growth in all), open FDs within ±10 of the start,
WAL ≤ 64 MiB at every sample, no 5xx, and the helpers' RSS slope ≤ 1 MiB/min too. Exit status
0 when all hold.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
STILLROOM = str(ROOT / ".venv" / "bin" / "stillroom")
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "soak test"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def streams(base: str, stop: float, stats: dict[str, int]) -> None:
    async def one(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            abandon = random.random() < 0.1
            try:
                async with client.stream(
                    "POST",
                    base + "/v1/chat/completions",
                    json={**CHAT, "stream": True},
                    headers={"x-mock-chunks": "40", "x-mock-gap-ms": "50"},
                ) as r:
                    if r.status_code >= 500:
                        stats["5xx"] += 1
                    n = 0
                    async for _ in r.aiter_raw():
                        n += 1
                        if abandon and n == 20:
                            stats["aborted"] += 1
                            break
                stats["streams"] += 1
            except httpx.HTTPError:
                stats["errors"] += 1

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=40)) as client:
        await asyncio.gather(*(one(client) for _ in range(20)))


async def plain(base: str, stop: float, stats: dict[str, int], rate: float) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        next_at = time.monotonic()
        pending: set[asyncio.Task[None]] = set()

        async def one() -> None:
            try:
                r = await client.post(base + "/v1/chat/completions", json=CHAT)
                stats["5xx" if r.status_code >= 500 else "plain"] += 1
            except httpx.HTTPError:
                stats["errors"] += 1

        while time.monotonic() < stop:
            task = asyncio.ensure_future(one())  # noqa: TID251 - a load generator, not the app
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*pending)


def helpers_rss(proc: psutil.Process) -> int:
    """Resident memory of the proxy's helper processes (the capture indexer, its fork server)."""
    total = 0
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.seg")) if folder.exists() else 0


async def sample(
    proc: psutil.Process, db: Path, stop: float, out: list[tuple], extra: list[tuple]
) -> None:
    start = time.monotonic()
    wal, spool = Path(str(db) + "-wal"), Path(str(db) + ".spool")
    while time.monotonic() < stop:
        wal_size = wal.stat().st_size if wal.exists() else 0
        now = time.monotonic() - start
        out.append((now, proc.memory_info().rss, proc.num_fds(), wal_size))
        extra.append((now, helpers_rss(proc), folder_size(spool)))
        await asyncio.sleep(5)


def slope_per_minute(points: list[tuple[float, int]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 60 * sum((t - mx) * (v - my) for t, v in points) / var if var else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="non-streamed requests/s")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stillroom-soak-"))
    db = work / "soak.db"
    mock_port, proxy_port = free_port(), free_port()
    mock = subprocess.Popen([STILLROOM, "mock", "--port", str(mock_port)])
    env = {**os.environ, "STILLROOM_DATABASE": str(db)}
    proxy = subprocess.Popen(
        [
            STILLROOM,
            "serve",
            "--port",
            str(proxy_port),
            "--upstream",
            f"http://127.0.0.1:{mock_port}",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{proxy_port}"
    stats = {"streams": 0, "plain": 0, "aborted": 0, "errors": 0, "5xx": 0}
    samples: list[tuple] = []
    helpers: list[tuple] = []  # (t, helper processes' RSS, spool bytes)
    try:
        wait_up(f"http://127.0.0.1:{mock_port}/v1/models")
        wait_up(base + "/healthz")
        stop = time.monotonic() + args.minutes * 60

        async def run() -> None:
            await asyncio.gather(
                streams(base, stop, stats),
                plain(base, stop, stats, args.rate),
                sample(psutil.Process(proxy.pid), db, stop, samples, helpers),
            )

        asyncio.run(run())
    finally:
        proxy.terminate()
        mock.terminate()
        proxy.wait(30)
        mock.wait(30)
    mib = 1024 * 1024
    later = [(t, rss) for t, rss, _, _ in samples if t >= 120] or [(t, r) for t, r, _, _ in samples]
    slope = slope_per_minute(later) / mib
    growth = (samples[-1][1] - samples[0][1]) / mib
    # Under load the proxy holds client and upstream sockets; compare with the first sample
    # taken once the load is running (30 s in), not with the idle process.
    fds = [f for t, _, f, _ in samples if t >= 30] or [f for _, _, f, _ in samples]
    wal_max = max(w for _, _, _, w in samples) / mib
    print(f"load: {stats}")
    first, last = samples[0][1] / mib, samples[-1][1] / mib
    print(f"RSS {first:.1f} -> {last:.1f} MiB; slope from minute 2 {slope:+.2f} MiB/min")
    helper_later = [(t, rss) for t, rss, _ in helpers if t >= 120] or [
        (t, r) for t, r, _ in helpers
    ]
    helper_slope = slope_per_minute(helper_later) / mib
    spool_max = max(b for _, _, b in helpers) / mib
    print(
        f"indexer + fork server RSS {helpers[0][1] / mib:.1f} -> {helpers[-1][1] / mib:.1f} MiB; "
        f"slope from minute 2 {helper_slope:+.2f} MiB/min; spool at most {spool_max:.1f} MiB"
    )
    checks = [
        ("RSS slope from minute 2 <= 1 MiB/min", slope <= 1.0),
        ("RSS growth <= 10 MiB", growth <= 10.0),
        (
            f"open FDs within +-10 under load (at 30 s {fds[0]}, range {min(fds)}-{max(fds)})",
            max(abs(f - fds[0]) for f in fds) <= 10,
        ),
        (f"WAL <= 64 MiB at every sample (max {wal_max:.1f} MiB)", wal_max <= 64),
        ("no 5xx", stats["5xx"] == 0),
        ("indexer RSS slope from minute 2 <= 1 MiB/min", helper_slope <= 1.0),
    ]
    for name, ok in checks:
        print(("PASS" if ok else "FAIL") + " - " + name)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
