"""T18 (hypothesis flavour): the parsers that see client or upstream bytes never raise anything
but their documented errors, and never hang. CI runs a few hundred examples per target;
`pytest -m slow` runs 100,000."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import InvalidRequest
from proxy.headers import client_response_headers, declared_length, upstream_request_headers
from proxy.records import ExchangeCopy, build_record
from proxy.sse import SSEDecoder
from proxy.tags import parse_capture_switch, parse_tags, split_prefix
from proxy.transcript import reassemble_transcript
from tests.conftest import make_copy

header = st.tuples(st.binary(max_size=20), st.binary(max_size=40))
tricky_bytes = st.one_of(
    st.binary(max_size=512),
    st.lists(
        st.sampled_from(
            [b"data: ", b"event: ", b"\n", b"\r", b"\r\n", b":", b"{", b"}", b'"choices"', b"[",
             b"]", b'"delta"', b'"index":', b"0", b"1", b'"content":"x"', b"[DONE]", b"\xff",
             b'"tool_calls"', b",", b'"type":"response.completed"', b'"response":']
        ),
        max_size=80,
    ).map(b"".join),
)  # fmt: skip


def copy_of(endpoint: str, request: bytes, response: bytes, content_type: str) -> ExchangeCopy:
    return make_copy(
        capture_id="id",
        created_at=0.0,
        endpoint=endpoint,
        path="/v1/" + endpoint,
        request_body=request,
        response_body=response,
        content_type=content_type,
    )


def fuzz(examples: int):
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


def check_headers(headers):
    upstream_request_headers(headers, "sk-op")
    client_response_headers(headers)
    try:
        declared_length(headers)
    except ValueError:
        pass


def check_tags(text):
    for parse in (parse_tags, parse_capture_switch):
        try:
            parse(text, "fuzz")
        except InvalidRequest:
            pass
    split_prefix("/t/" + text + "/v1/chat/completions")


def check_stream(data):
    decoder = SSEDecoder()
    decoder.feed(data)
    decoder.close()
    for endpoint in ("chat/completions", "responses", "completions"):
        reassemble_transcript(endpoint, data)
        build_record(copy_of(endpoint, data, data, "text/event-stream"))
        build_record(copy_of(endpoint, data, data, "application/json"))


@fuzz(300)
@given(st.lists(header, max_size=12))
def test_header_policy(headers):
    check_headers(headers)


@fuzz(300)
@given(st.text(max_size=80))
def test_tag_parsers(text):
    check_tags(text)


@fuzz(300)
@given(tricky_bytes)
def test_stream_and_record_builders(data):
    check_stream(data)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@fuzz(100_000)
@given(st.lists(header, max_size=12), st.text(max_size=80), tricky_bytes)
def test_all_parsers_long_run(headers, text, data):
    check_headers(headers)
    check_tags(text)
    check_stream(data)
