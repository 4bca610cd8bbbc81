"""CPU cost of capture per exchange, in process, without the network or the database.

    .venv/bin/python bench/capture_cost.py

For a non-streamed chat (2.5 KB request, 1 KB answer) and a 53-event streamed chat from
`stillroom mock` it times, per exchange:

* deferred indexing (the SQLite default): the capture policy + tee + packing the frame (what
  the request task pays), and the writer's spool append per capture (batches of 200, in a
  temporary folder); everything else is the indexer process's work;
* inline: the capture policy + tee + record building, reassembling the stream alone, and the
  store's record encoding (what the writer pays before the SQLite insert).

Process CPU time, best of 5 rounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import tempfile
import time
from pathlib import Path

import orjson

from proxy.capture import CaptureDrops, CapturePolicy
from proxy.mock import MockOptions, create_mock_app
from proxy.transcript import reassemble_transcript
from storage._rows import encode_batch
from storage.models import CaptureRecord
from storage.sqlite import SQLiteStore

SCOPE = {
    "method": "POST",
    "path": "/v1/chat/completions",
    "headers": [(b"authorization", b"Bearer sk-bench"), (b"x-stainless-retry-count", b"0")],
}


class _Collect:
    def __init__(self) -> None:
        self.records: list = []

    def submit(self, record: CaptureRecord | bytes) -> bool:
        self.records.append(record)
        return True


async def mock_answer(body: bytes) -> tuple[bytes, bytes]:
    """The mock's content type and body for ``body`` (called as a plain ASGI app)."""
    app = create_mock_app(MockOptions(chunks=50))
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {**SCOPE, "type": "http", "query_string": b"", "raw_path": b"/v1/chat/completions"}
    await app(scope, receive, send)
    headers = dict(sent[0]["headers"])
    return headers[b"content-type"], b"".join(m.get("body", b"") for m in sent[1:])


def best_of(rounds: int, n: int, fn) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - start) / n)
    return best * 1e6


MESSAGES = [
    {"role": "system", "content": "You are a careful assistant. " * 70},
    {"role": "user", "content": "Summarise the attached report. " * 16},
]


def main() -> None:
    for stream in (False, True):
        measure(stream)


def measure(stream: bool) -> None:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream})
    content_type, answer = asyncio.run(mock_answer(body))
    sink = _Collect()
    policy = CapturePolicy(
        sink,  # type: ignore[arg-type]
        max_bytes=4 << 20,
        fingerprint_secret=b"s" * 32,
        drops=CaptureDrops(),
    )
    headers = [(b"content-type", content_type), (b"x-request-id", b"req_1")]

    def capture() -> None:
        tee = policy(SCOPE, body, {b"x-stillroom-tags": b"task=bench"})
        assert tee is not None
        tee.on_response_start(200, headers)
        tee.on_chunk(answer)
        tee.on_end("completed", None, 0.01)

    deferred = CapturePolicy(
        sink,  # type: ignore[arg-type]
        max_bytes=4 << 20,
        fingerprint_secret=b"s" * 32,
        drops=CaptureDrops(),
        deferred=True,
    )

    def capture_deferred() -> None:
        tee = deferred(SCOPE, body, {b"x-stillroom-tags": b"task=bench"})
        assert tee is not None
        tee.on_response_start(200, headers)
        tee.on_chunk(answer)
        tee.on_end("completed", None, 0.01)

    kind = "stream (53 events)" if stream else "plain chat"
    print(f"{kind}: request {len(body)} B, response {len(answer)} B")
    print(f"  deferred (SQLite): policy + tee + frame: {best_of(5, 500, capture_deferred):5.1f} us")
    packed = [item for item in sink.records if isinstance(item, bytes)][:200]
    sink.records = [r for r in sink.records if not isinstance(r, bytes)]
    path = Path(tempfile.mkdtemp()) / "spool.db"

    async def append() -> float:
        async with SQLiteStore(path) as store:
            await store.migrate()
            cpu = time.process_time()
            for _ in range(20):
                await store.append_spool(packed)
            return (time.process_time() - cpu) / (20 * len(packed)) * 1e6

    print(f"    spool append per capture (writer, batches of 200): {asyncio.run(append()):5.1f} us")
    print(f"  inline: policy + tee + build_record: {best_of(5, 500, capture):7.1f} us")
    if stream:
        reassembly = best_of(5, 500, lambda: reassemble_transcript("chat/completions", answer))
        print(f"  of which reassembly:          {reassembly:7.1f} us")
        # A server that stamps every event differently: no event is in the frame of the one
        # before, so each is parsed in full (the fast path's worst case).
        stamps = iter(range(1_000_000))
        stamped = re.sub(rb'"created":\d+', lambda _: b'"created":%d' % next(stamps), answer)
        worst = best_of(5, 500, lambda: reassemble_transcript("chat/completions", stamped))
        print(f"  reassembly, every event differs: {worst:4.1f} us")
    records = [dataclasses.replace(sink.records[0], id=str(i)) for i in range(200)]
    encode = best_of(5, 5, lambda: encode_batch(records)) / len(records)
    print(f"  store encoding per record:    {encode:7.1f} us")


if __name__ == "__main__":
    main()
