from __future__ import annotations

import pytest

from proxy.headers import (
    client_response_headers,
    declared_length,
    has_conflicting_framing,
    upstream_request_headers,
)


def test_request_drops_hop_by_hop_connection_named_host_and_ours():
    client = [
        (b"host", b"evil.example"),
        (b"connection", b"close, X-Foo"),
        (b"x-foo", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"trailer", b"x"),
        (b"upgrade", b"h2c"),
        (b"proxy-authorization", b"Basic abc"),
        (b"proxy-connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"12"),
        (b"expect", b"100-continue"),
        (b"x-stillroom-tags", b"task=a"),
        (b"x-stillroom-capture", b"off"),
        (b"authorization", b"Bearer sk-abc"),
        (b"x-forwarded-host", b"other"),
        (b"openai-organization", b"org"),
    ]
    out, ours = upstream_request_headers(client)
    assert out == [
        (b"authorization", b"Bearer sk-abc"),
        (b"x-forwarded-host", b"other"),
        (b"openai-organization", b"org"),
    ]
    assert ours == {b"x-stillroom-tags": b"task=a", b"x-stillroom-capture": b"off"}


def test_api_key_is_added_only_without_client_auth():
    out, _ = upstream_request_headers([(b"accept", b"*/*")], "sk-op")
    assert (b"authorization", b"Bearer sk-op") in out
    out, _ = upstream_request_headers([(b"authorization", b"Bearer mine")], "sk-op")
    assert out == [(b"authorization", b"Bearer mine")]
    out, _ = upstream_request_headers([(b"api-key", b"azure")], "sk-op")
    assert out == [(b"api-key", b"azure")]


def test_response_drops_hop_by_hop_keeps_the_rest_and_marks_streams():
    upstream = [
        (b"Content-Type", b"text/event-stream; charset=utf-8"),
        (b"Connection", b"keep-alive, X-Bar"),
        (b"X-Bar", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Keep-Alive", b"timeout=5"),
        (b"x-request-id", b"req_1"),
        (b"openai-processing-ms", b"12"),
        (b"x-ratelimit-remaining-requests", b"99"),
        (b"retry-after", b"1"),
        (b"content-encoding", b"gzip"),
    ]
    assert client_response_headers(upstream) == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-request-id", b"req_1"),
        (b"openai-processing-ms", b"12"),
        (b"x-ratelimit-remaining-requests", b"99"),
        (b"retry-after", b"1"),
        (b"content-encoding", b"gzip"),
        (b"x-accel-buffering", b"no"),
    ]


def test_json_response_is_not_marked():
    out = client_response_headers([(b"content-type", b"application/json")])
    assert out == [(b"content-type", b"application/json")]


def test_framing_checks():
    assert has_conflicting_framing([(b"content-length", b"1"), (b"transfer-encoding", b"chunked")])
    assert not has_conflicting_framing([(b"content-length", b"1")])
    assert not has_conflicting_framing([(b"transfer-encoding", b"chunked")])
    assert declared_length([(b"content-length", b" 42 ")]) == 42
    assert declared_length([(b"accept", b"x")]) is None
    with pytest.raises(ValueError):
        declared_length([(b"content-length", b"-1")])
