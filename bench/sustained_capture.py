"""Capture under sustained full load: what deferred indexing does once its lag bound is passed.

    .venv/bin/python bench/sustained_capture.py [--windows 12] [--window 10] [--max-lag 30]

Like `bench/run`, `stillroom mock` and the load generator share CPU 0 and the proxy (with its
indexer process) runs on CPU 1. Non-streamed chat at concurrency 16 for ``--windows``
back-to-back windows of ``--window`` seconds, once with capture off and once with capture on
(deferred indexing, ``STILLROOM_CAPTURE_INDEX_MAX_LAG=--max-lag``). For each window it prints
requests per second, and for capture on the index lag and backlog at the window's end: while
the lag is under the bound the indexer waits and the proxy runs at capture-off speed; past it
the indexer runs at normal priority until it is back under half the bound, and the proxy
slows by what indexing costs. The last lines give the capture-on / capture-off ratio over all
windows, and how long the backlog took to drain after the load stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
STILLROOM = str(ROOT / ".venv" / "bin" / "stillroom")
MOCK_PORT, PROXY_PORT = 18101, 18102


def metric(name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PROXY_PORT}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def window(seconds: float) -> float:
    out = subprocess.run(
        ["taskset", "-c", "0", PYTHON, str(ROOT / "bench" / "loadgen.py"),
         "--url", f"http://127.0.0.1:{PROXY_PORT}/v1/chat/completions",
         "-c", "16", "--warmup", "0", "--duration", str(seconds)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return float(json.loads(out)["rps"])


def run(capture: bool, args: argparse.Namespace, tmp: Path) -> list[float]:
    env = {
        **os.environ,
        "STILLROOM_CAPTURE": "on" if capture else "off",
        "STILLROOM_CAPTURE_INDEX_MAX_LAG": str(args.max_lag),
    }
    db = tmp / f"{'on' if capture else 'off'}.db"
    proxy = subprocess.Popen(
        ["taskset", "-c", "1", STILLROOM, "serve", "--port", str(PROXY_PORT),
         "--upstream", f"http://127.0.0.1:{MOCK_PORT}", "--database", str(db)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rates: list[float] = []
    try:
        wait_http(f"http://127.0.0.1:{PROXY_PORT}/healthz")
        label = "capture on " if capture else "capture off"
        for i in range(args.windows):
            rates.append(window(args.window))
            extra = ""
            if capture:
                lag = metric("stillroom_capture_index_lag_seconds") or 0.0
                backlog = (metric("stillroom_capture_index_backlog_bytes") or 0.0) / 2**20
                extra = f"  index lag {lag:5.1f} s  backlog {backlog:7.1f} MiB"
            print(f"{label} window {i + 1:2}: {rates[-1]:7.0f} req/s{extra}", flush=True)
        if capture:
            started = time.monotonic()
            while (metric("stillroom_capture_index_backlog_bytes") or 0) > 0:
                time.sleep(0.2)
            print(f"backlog drained {time.monotonic() - started:.1f} s after the load stopped")
    finally:
        proxy.terminate()
        proxy.wait(120)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--max-lag", type=float, default=30.0)
    args = parser.parse_args()
    mock = subprocess.Popen(
        ["taskset", "-c", "0", STILLROOM, "mock", "--port", str(MOCK_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{MOCK_PORT}/v1/models")
        with tempfile.TemporaryDirectory(prefix="stillroom-sustained-") as tmp:
            off = run(False, args, Path(tmp))
            on = run(True, args, Path(tmp))
    finally:
        mock.terminate()
        mock.wait(30)
    total_off, total_on = sum(off), sum(on)
    print(
        f"capture on / capture off over {args.windows} x {args.window:.0f} s: "
        f"{total_on / total_off:.3f} (median window {statistics.median(on):.0f} vs "
        f"{statistics.median(off):.0f} req/s)"
    )


if __name__ == "__main__":
    sys.exit(main())
