"""Capture end to end: the real proxy and the official SDK in front of `stillroom mock`, records
read back from the SQLite file."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import time
import uuid

import httpx
import openai
import pytest

from proxy.reassemble import normalize_chat_completion
from storage.sqlite import SQLiteStore
from tests.conftest import make_copy

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise the news"}]}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Look up {name}",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    for name in ("get_weather", "get_time")
]


@pytest.fixture
def captured(start_proxy, mock_url, tmp_path):
    """A proxy with capture on, plus a reader for its database."""
    db = tmp_path / "captures.db"
    with start_proxy(upstream=mock_url, database=str(db), flush_interval=0.02) as base:
        yield base, db


def read_capture(db, capture_id: str, timeout: float = 5.0):
    async def poll():
        async with SQLiteStore(str(db)) as store:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                record = await store.get(capture_id)
                if record is not None:
                    return record
                await asyncio.sleep(0.02)
        raise AssertionError(f"capture {capture_id} never landed")

    return asyncio.run(poll())


def count_captures(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM captures").fetchone()[0]


def sdk(base: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-capture-test", max_retries=0, **kwargs)


@pytest.mark.parametrize("tools", [None, TOOLS[:1], TOOLS], ids=["text", "tool", "parallel"])
def test_streamed_and_plain_chat_capture_to_equal_objects(captured, tools):
    base, db = captured
    extra = {"tools": tools} if tools else {}
    with sdk(base) as client:
        plain = client.chat.completions.with_raw_response.create(**CHAT, **extra)
        streamed = client.chat.completions.with_raw_response.create(
            **CHAT, **extra, stream=True, stream_options={"include_usage": True}
        )
        list(streamed.parse())
    a = read_capture(db, plain.headers["x-stillroom-capture-id"])
    b = read_capture(db, streamed.headers["x-stillroom-capture-id"])
    assert a.outcome == b.outcome == "completed" and a.status == b.status == 200
    assert (a.stream, b.stream) == (False, True)
    assert a.response == json.loads(plain.content)  # the body exactly as the SDK got it
    assert normalize_chat_completion(a.response) == b.response
    assert a.has_tool_calls == b.has_tool_calls == bool(tools)
    if tools == TOOLS:
        assert len(b.response["choices"][0]["message"]["tool_calls"]) == 2
    assert b.usage.input_tokens and b.usage.output_tokens
    assert b.response_body.endswith(b"data: [DONE]\n\n")
    assert b.ttft_ms is not None and b.latency_ms >= b.ttft_ms
    assert a.requested_model == "gpt-4o-mini" and a.returned_model
    assert a.upstream_request_id == plain.headers["x-request-id"]
    assert a.key_fingerprint and a.key_fingerprint == b.key_fingerprint
    assert "sk-capture-test" not in a.key_fingerprint


def test_responses_and_completions_are_captured(captured):
    base, db = captured
    with sdk(base) as client:
        r = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Hello")
        first = r.parse()
        follow = client.responses.with_raw_response.create(
            model="gpt-4o-mini", input="And then?", previous_response_id=first.id
        )
        s = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Hi", stream=True)
        list(s.parse())
        c = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Hi")
    plain = read_capture(db, r.headers["x-stillroom-capture-id"])
    assert plain.response["id"] == first.id == plain.response_id
    chained = read_capture(db, follow.headers["x-stillroom-capture-id"])
    assert chained.previous_response_id == first.id
    streamed = read_capture(db, s.headers["x-stillroom-capture-id"])
    assert streamed.response["status"] == "completed" and streamed.stream
    assert streamed.usage.output_tokens
    legacy = read_capture(db, c.headers["x-stillroom-capture-id"])
    assert legacy.endpoint == "completions" and legacy.response["choices"][0]["text"]


def test_embeddings_keep_metadata_only(captured):
    base, db = captured
    with sdk(base) as client:
        e = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="x")
    record = read_capture(db, e.headers["x-stillroom-capture-id"])
    assert record.response_body == b"" and "data" not in record.response
    assert record.usage.input_tokens


def test_tags_from_header_metadata_and_prefix(captured):
    base, db = captured
    with sdk(base, default_headers={"X-Stillroom-Tags": "task=summarize, team=search"}) as client:
        h = client.chat.completions.with_raw_response.create(
            **CHAT, metadata={"team": "body", "user": "u1"}
        )
    with sdk(base + "/t/task=classify,env=prod") as client:
        p = client.chat.completions.with_raw_response.create(**CHAT)
    header_record = read_capture(db, h.headers["x-stillroom-capture-id"])
    assert dict(header_record.tags) == {"task": "summarize", "team": "search", "user": "u1"}
    prefix_record = read_capture(db, p.headers["x-stillroom-capture-id"])
    assert dict(prefix_record.tags) == {"task": "classify", "env": "prod"}
    assert prefix_record.path == "/v1/chat/completions"


def test_capture_can_be_switched_off_per_request(captured, mock_url):
    base, db = captured
    with httpx.Client() as client:
        off = client.post(
            base + "/v1/chat/completions", json=CHAT, headers={"x-stillroom-capture": "off"}
        )
        prefixed = client.post(base + "/t/capture=off/v1/chat/completions", json=CHAT)
        on = client.post(base + "/v1/chat/completions", json=CHAT)
    assert off.status_code == prefixed.status_code == 200
    assert "x-stillroom-capture-id" not in off.headers
    assert "x-stillroom-capture-id" not in prefixed.headers
    read_capture(db, on.headers["x-stillroom-capture-id"])
    assert count_captures(db) == 1


@pytest.mark.parametrize(
    ("url_suffix", "headers"),
    [
        ("/v1/chat/completions", {"x-stillroom-tags": "task"}),
        ("/v1/chat/completions", {"x-stillroom-tags": "=value"}),
        ("/v1/chat/completions", {"x-stillroom-capture": "maybe"}),
        ("/t/novalue/v1/chat/completions", {}),
    ],
)
def test_invalid_tags_are_refused_before_going_upstream(captured, mock_url, url_suffix, headers):
    base, _ = captured
    test_id = uuid.uuid4().hex
    r = httpx.post(base + url_suffix, json=CHAT, headers={**headers, "x-test-id": test_id})
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    log = httpx.get(mock_url + "/_mock/requests").json()
    assert not [e for e in log if ["x-test-id", test_id] in e["headers"]]


def test_outcomes(captured):
    base, db = captured
    with httpx.Client(timeout=10) as client:
        error = client.post(
            base + "/v1/chat/completions", json=CHAT, headers={"x-mock-status": "500"}
        )
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(
                base + "/v1/chat/completions",
                json={**CHAT, "stream": True},
                headers={"x-mock-cut-after": "3"},
            )
    record = read_capture(db, error.headers["x-stillroom-capture-id"])
    assert record.outcome == "upstream_error" and record.status == 500
    assert record.response["error"]["message"]

    def cut_capture():
        with sqlite3.connect(db) as conn:
            return conn.execute(
                "SELECT outcome, stream FROM captures WHERE outcome != 'completed' AND status = 200"
            ).fetchall()

    deadline = time.monotonic() + 5
    while not cut_capture() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cut_capture() == [("upstream_error", 1)]


def test_client_disconnect_is_recorded(captured):
    base, db = captured

    async def abandon():
        async with httpx.AsyncClient() as client:
            async with client.stream(
                "POST",
                base + "/v1/chat/completions",
                json={**CHAT, "stream": True},
                headers={"x-mock-gap-ms": "100", "x-mock-chunks": "50"},
            ) as r:
                capture_id = r.headers["x-stillroom-capture-id"]
                async for _ in r.aiter_raw():
                    break
        return capture_id

    record = read_capture(db, asyncio.run(abandon()))
    assert record.outcome == "client_disconnected"
    assert record.response_body.startswith(b"data: ")


def test_locked_database_never_reaches_the_client(captured):
    base, db = captured
    with httpx.Client() as client:
        client.post(base + "/v1/chat/completions", json=CHAT)  # database exists, WAL on
        deadline = time.monotonic() + 5
        while count_captures(db) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            answers = [client.post(base + "/v1/chat/completions", json=CHAT) for _ in range(30)]
            elapsed = time.monotonic() - started
        finally:
            lock.execute("COMMIT")
            lock.close()
    assert all(r.status_code == 200 for r in answers)
    assert elapsed < 5
    deadline = time.monotonic() + 10
    while count_captures(db) < 31 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count_captures(db) == 31


def test_capture_metrics(captured):
    base, db = captured
    with httpx.Client() as client:
        r = client.post(base + "/v1/chat/completions", json=CHAT)
        read_capture(db, r.headers["x-stillroom-capture-id"])
        metrics = client.get(base + "/metrics").text
    assert "stillroom_captures_written_total 1.0" in metrics
    assert 'stillroom_captures_dropped_total{reason="queue_full"} 0.0' in metrics
    assert "stillroom_capture_queue_depth 0.0" in metrics
    assert "stillroom_capture_batch_write_seconds_count" in metrics


def test_capture_off_setting_forwards_without_recording(start_proxy, mock_url, tmp_path):
    with start_proxy(upstream=mock_url, capture="off", database=str(tmp_path / "x.db")) as base:
        r = httpx.post(base + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and "x-stillroom-capture-id" not in r.headers
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("stream", [False, True])
def test_t8_huge_response_reaches_the_client_whole_and_the_capture_cut(
    start_proxy, mock_url, tmp_path, stream
):
    import hashlib

    db = tmp_path / "huge.db"
    cap = 1024 * 1024
    body = {**CHAT, "stream": stream}
    headers = {"x-mock-mode": "huge:6"}
    with (
        start_proxy(upstream=mock_url, database=str(db), capture_max_bytes=cap) as base,
        httpx.Client(timeout=30) as client,
    ):
        direct = client.post(mock_url + "/v1/chat/completions", json=body, headers=headers)
        proxied = client.post(base + "/v1/chat/completions", json=body, headers=headers)
    assert len(proxied.content) >= 6 * 1024 * 1024
    assert hashlib.sha256(proxied.content).digest() == hashlib.sha256(direct.content).digest()
    record = read_capture(db, proxied.headers["x-stillroom-capture-id"])
    assert record.response_truncated and len(record.response_body) == cap
    assert record.response_body == proxied.content[:cap]


# --- the policy's and the record's own shortcuts (no proxy, no database) ----------------------


class _Sink:
    def __init__(self) -> None:
        self.records: list = []

    def submit(self, record) -> bool:
        self.records.append(record)
        return True


def _policy(sink: _Sink):
    from proxy.capture import CaptureDrops, CapturePolicy

    return CapturePolicy(
        sink, max_bytes=1 << 20, fingerprint_secret=b"k" * 32, drops=CaptureDrops()
    )


def _scope(headers):
    return {"method": "POST", "path": "/v1/chat/completions", "headers": headers}


@pytest.mark.parametrize(
    ("headers", "credential"),
    [
        ([(b"authorization", b"Bearer sk-a")], "sk-a"),
        ([(b"authorization", b"  bearer   sk-b  ")], "sk-b"),
        ([(b"authorization", b"Basic abc")], "Basic abc"),
        ([(b"authorization", b"Bearer ")], "Bearer"),
        ([(b"api-key", b" az-key ")], "az-key"),
        ([(b"api-key", b"az"), (b"authorization", b"Bearer sk-c")], "az"),
        ([(b"authorization", b"Bearer sk-d"), (b"api-key", b"az")], "sk-d"),
        ([(b"authorization", b"   ")], None),
        ([(b"api-key", b""), (b"authorization", b"Bearer sk-e")], None),
        ([(b"x-other", b"1")], None),
    ],
)
def test_cached_fingerprints_equal_the_hmac_of_the_credential(headers, credential):
    from proxy.capture import credential as read_credential
    from proxy.capture import key_fingerprint

    policy = _policy(_Sink())
    expected = key_fingerprint(b"k" * 32, credential) if credential else None
    assert (read_credential(headers) or None) == credential
    for _ in range(2):  # computed, then from the cache
        tee = policy(_scope(headers), b"{}", {})
        assert tee is not None and tee.fingerprint == expected


def test_the_fingerprint_cache_is_bounded():
    from proxy import capture

    policy = _policy(_Sink())
    for n in range(capture.FINGERPRINT_CACHE_SIZE + 50):
        tee = policy(_scope([(b"authorization", b"Bearer sk-%d" % n)]), b"{}", {})
        assert tee is not None
        assert tee.fingerprint == capture.key_fingerprint(b"k" * 32, f"sk-{n}")
    assert len(policy._fingerprints) == capture.FINGERPRINT_CACHE_SIZE


def test_retry_count_with_credential_headers_in_any_order():
    policy = _policy(_Sink())
    headers = [
        (b"x-stainless-retry-count", b"1"),
        (b"authorization", b"Bearer sk"),
        (b"x-stainless-retry-count", b"2"),
    ]
    tee = policy(_scope(headers), b"{}", {})
    assert tee is not None and tee.retry_count == 2
    tee = policy(_scope([(b"x-stainless-retry-count", b"x")]), b"{}", {})
    assert tee is not None and tee.retry_count is None and tee.fingerprint is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"x","choices":[{"message":{"content":"hi","refusal":null}}],"n":1.5}',
        b'{ "id" : "spaced",\n "usage": {"total_tokens": 3} }',
        b'{"big":1e5}',  # re-serialises longer than the body: stored as JSON, not from body
        b'{"u":"\\u00e9t\\u00e9"}',
        b'{"huge":18446744073709551616}',
        b'{"d":{"a":1,"a":2}}',
    ],
)
def test_a_parsed_body_encodes_exactly_like_a_plain_dict(body):
    import dataclasses

    from proxy.records import build_record
    from storage._rows import _encode_response, encode_batch
    from storage.models import ParsedBody

    copy = make_copy(response_body=body)
    record = build_record(copy)
    assert type(record.response) is ParsedBody
    plain = dataclasses.replace(record, response=dict(record.response))
    assert _encode_response(record) == _encode_response(plain)
    assert encode_batch([record]).captures[0].row == encode_batch([plain]).captures[0].row
    cut = dataclasses.replace(record, response_truncated=True)
    assert _encode_response(cut) == _encode_response(
        dataclasses.replace(plain, response_truncated=True)
    )
    # Only the stored body itself counts: an answer decoded from gzip is a plain dict.
    gzipped = dataclasses.replace(copy, response_body=gzip.compress(body), content_encoding="gzip")
    assert type(build_record(gzipped).response) is dict


def test_a_request_the_router_parsed_builds_the_same_record():
    """The router's parse of the body (``ExchangeCopy.request``) stands in for the record's own."""
    import dataclasses

    import orjson

    from proxy.records import build_record

    body = orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "metadata": {"task": "t"},
         "messages": [{"role": "user", "content": "hi"}]}
    )  # fmt: skip
    copy = make_copy(
        request_body=body, response_body=b'{"id":"chatcmpl-1","model":"m","choices":[]}'
    )
    parsed = build_record(dataclasses.replace(copy, request=orjson.loads(body)))
    assert parsed == build_record(copy)
    assert parsed.requested_model == "gpt-4o-mini" and parsed.stream
    assert parsed.tags == {"task": "t"}
