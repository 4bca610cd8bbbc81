"""What shadow mode costs the client: ``stillroom serve`` with a route in shadow mode (every
request also sent to the student afterwards) against the same server with no route, same run.

Issue #8's bar: shadow adds no more than 1 ms to the client's p50 latency at concurrency 16,
and never more student requests in flight than the route's cap (``max_concurrency``; read
from ``stillroom_shadow_in_flight_peak`` on ``/metrics``).

Setup: one ``stillroom mock`` is the teacher, a second one the student; like ``bench/run``, the
proxy runs alone on CPU 1 while the mocks and the load generator share CPU 0, so the figures
show what shadow traffic costs the proxy, not what the student costs the machine (a real
student runs elsewhere, usually on a GPU). With ``--spread`` (a machine of 6 or more CPUs) the
teacher and the student get a core each (CPUs 2 and 3), so the load generator has CPU 0 alone
and the shadow worker one of the idle cores. Each round runs
``no-route`` then ``shadow`` (then the other order next round), ``--duration`` seconds each at
``-c`` connections, non-streamed and streamed. Reports medians over rounds of p50 and p99, the
p50 difference, shadow pairs kept, the peak in flight, and per request the proxy's CPU, the
shadow worker's CPU, and the proxy's read and write system calls (``/proc/PID/io``: a relay
that writes each upstream piece on its own, or a shadow pipe that carries frames nobody takes,
shows there first).

    .venv/bin/python bench/shadow_overhead.py --rounds 3 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import descendants, syscalls, tree_cpu  # noqa: E402
from bench.loadgen import build_request, run_cell  # noqa: E402

STILLROOM = str(ROOT / ".venv" / "bin" / "stillroom")
CAP = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.1)


def start(args: list[str], log: Path, cpu: int | None = None) -> subprocess.Popen[bytes]:
    """Start a server; pinned to ``cpu`` when given (as bench/run pins the proxy)."""
    if cpu is not None and (os.cpu_count() or 1) > 1:
        args = ["taskset", "-c", str(cpu), *args]
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def make_route(db: Path, student: str, rate: float = 1.0) -> None:
    from proxy.routing.service import RouteService
    from storage.sqlite import SQLiteStore

    async def go() -> None:
        async with SQLiteStore(db) as store:
            await store.migrate()
            await RouteService(store).create(
                {
                    "name": "bench",
                    "model": "gpt-4o-mini",
                    "student": {"base_url": student + "/v1", "model": "student"},
                    "mode": "shadow",
                    "shadow_rate": rate,
                    "max_concurrency": CAP,
                    "timeout_s": 10,
                }
            )

    asyncio.run(go())


def metric(base: str, prefix: str) -> float | None:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument(
        "--student-latency-ms", type=float, default=50.0,
        help="the student's time to answer (a small model on a GPU: tens of ms; 0: as fast as "
        "the mock, when the student's own CPU load lands on the load generator's core)",
    )  # fmt: skip
    parser.add_argument(
        "--teacher-latency-ms", type=float, default=0.0,
        help="the teacher's time to answer (0: at once, so c=16 saturates the proxy's core and "
        "the added p50 measures the CPU shadowing costs; a real teacher takes 100s of ms)",
    )  # fmt: skip
    parser.add_argument(
        "--shadow-rate", type=float, default=1.0,
        help="the route's shadow_rate (0: the route decides and records, nothing is shadowed)",
    )  # fmt: skip
    parser.add_argument(
        "--spread", action="store_true",
        help="give the teacher and the student mocks a core each (CPUs 2 and 3; needs 6 CPUs)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the summary JSON here")
    args = parser.parse_args()
    if args.spread and (os.cpu_count() or 1) < 6:
        parser.error(f"--spread needs 6 CPUs or more; this machine has {os.cpu_count()}")
    mock_cpus = {"teacher": 2, "student": 3} if args.spread else {"teacher": 0, "student": 0}

    work = Path(tempfile.mkdtemp(prefix="stillroom-shadow-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        teacher_port, student_port = free_port(), free_port()
        teacher, student = f"http://127.0.0.1:{teacher_port}", f"http://127.0.0.1:{student_port}"
        # As bench/run: the proxy alone on CPU 1; the mocks and the load generator on CPU 0, so
        # what the proxy's core spends on shadow traffic is what the client's latency shows.
        if (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {0})
        for port, name, extra in (
            (teacher_port, "teacher", ["--latency-ms", str(args.teacher_latency_ms)]),
            (student_port, "student", ["--latency-ms", str(args.student_latency_ms)]),
        ):
            command = [STILLROOM, "mock", "--port", str(port), *extra]
            procs.append(start(command, work / f"{name}.log", mock_cpus[name]))
        for url in (teacher, student):
            wait_http(url + "/v1/models")
        servers: dict[str, tuple[str, int]] = {}
        pids: dict[str, int] = {}
        for name in ("no-route", "shadow"):
            db = work / f"{name}.db"
            if name == "shadow":
                make_route(db, student, args.shadow_rate)
            port = free_port()
            procs.append(
                start(
                    [STILLROOM, "serve", "--port", str(port), "--upstream", teacher,
                     "--database", str(db)],
                    work / f"{name}.log",
                    1,
                )
            )  # fmt: skip
            servers[name] = (f"http://127.0.0.1:{port}", port)
            pids[name] = procs[-1].pid
        for base, _ in servers.values():
            wait_http(base + "/healthz")

        cells: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        for round_no in range(args.rounds):
            order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
            for stream in (False, True):
                for name in order:
                    _, port = servers[name]
                    request = build_request("127.0.0.1", port, "/v1/chat/completions", stream)
                    workers = descendants(pids[name])  # the shadow worker, once it started

                    def snap(pid: int = pids[name], workers: list[int] = workers) -> list[float]:
                        return [tree_cpu([pid]), tree_cpu(workers), *syscalls(pid)]

                    result = run_cell(
                        "127.0.0.1", port, request, stream=stream,
                        concurrency=args.concurrency, warmup=args.warmup, duration=args.duration,
                        on_window_start=snap, on_window_end=snap,
                    )  # fmt: skip
                    a, b = result.pop("window_start"), result.pop("window_end")
                    served = result["rps"] * result["elapsed_s"]
                    result["proxy_us"] = (b[0] - a[0]) / served * 1e6 if served else 0.0
                    result["worker_us"] = (b[1] - a[1]) / served * 1e6 if served else 0.0
                    result["reads"] = (b[2] - a[2]) / served if served else 0.0
                    result["writes"] = (b[3] - a[3]) / served if served else 0.0
                    cells.setdefault((name, stream), []).append(result)
                    print(  # noqa: T201
                        f"round {round_no + 1} {name:<8} stream={stream!s:<5} "
                        f"p50 {result['latency_ms']['p50']:.2f} ms  p99 "
                        f"{result['latency_ms']['p99']:.2f} ms  {result['rps']:.0f} rps  "
                        f"proxy CPU {result['proxy_us']:.0f} us/req  "
                        f"worker {result['worker_us']:.0f} us/req  syscalls/req "
                        f"r {result['reads']:.1f} w {result['writes']:.1f}  "
                        f"errors {result['errors']}",
                        flush=True,
                    )
        shadow_base = servers["shadow"][0]
        time.sleep(2)  # let the shadow queue drain before reading the counters
        summary: dict[str, Any] = {
            "machine": f"{os.cpu_count()} CPUs, {sys.platform}",
            "layout": "spread: loadgen CPU 0, proxy CPU 1, teacher CPU 2, student CPU 3"
            if args.spread
            else "loadgen and both mocks CPU 0, proxy CPU 1",
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "cap": CAP,
            "teacher_latency_ms": args.teacher_latency_ms,
            "student_latency_ms": args.student_latency_ms,
            "shadow_rate": args.shadow_rate,
            "peak_in_flight": metric(shadow_base, 'stillroom_shadow_in_flight_peak{route="bench"}'),
            "shadow_sent": metric(shadow_base, 'stillroom_shadow_requests_total{outcome="sent"}'),
            "shadow_dropped": metric(
                shadow_base, 'stillroom_shadow_requests_total{outcome="dropped"}'
            ),
        }
        for stream in (False, True):
            kind = "stream" if stream else "json"
            rows = {}
            for name in servers:
                results = cells[(name, stream)]
                rows[name] = {
                    "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in results),
                    "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in results),
                    "rps": statistics.median(r["rps"] for r in results),
                    "proxy_cpu_us_per_request": statistics.median(r["proxy_us"] for r in results),
                    "worker_cpu_us_per_request": statistics.median(r["worker_us"] for r in results),
                    "proxy_reads_per_request": statistics.median(r["reads"] for r in results),
                    "proxy_writes_per_request": statistics.median(r["writes"] for r in results),
                    "errors": sum(r["errors"] for r in results),
                }
            rows["p50_added_ms"] = rows["shadow"]["p50_ms"] - rows["no-route"]["p50_ms"]
            # Paired: each round's shadow cell against the no-route cell run next to it, so a
            # slow round (this VM's noise) moves both sides of its difference alike.
            paired = sorted(
                s["latency_ms"]["p50"] - n["latency_ms"]["p50"]
                for s, n in zip(cells[("shadow", stream)], cells[("no-route", stream)], strict=True)
            )
            rows["p50_added_ms_paired"] = {
                "median": statistics.median(paired),
                "min": paired[0],
                "max": paired[-1],
                "rounds": [round(d, 3) for d in paired],
            }
            summary[kind] = rows
        print(json.dumps(summary, indent=1))  # noqa: T201
        if args.out:
            args.out.write_text(json.dumps(summary, indent=1) + "\n")
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
