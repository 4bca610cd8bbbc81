"""The capture fast path equals the full WHATWG decoder + reassemble, whatever the input."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import transcript
from proxy.reassemble import reassemble
from proxy.sse import SSEDecoder
from proxy.transcript import reassemble_transcript

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "sse").glob("*.sse"))


def slow_path(endpoint: str, data: bytes):
    decoder = SSEDecoder()
    events = decoder.feed(data)
    events += decoder.close()
    return reassemble(endpoint, events)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixtures_match_the_full_decoder_and_the_golden_answer(path):
    data = path.read_bytes()
    expected = orjson.loads(path.with_name(path.stem + ".expected.json").read_bytes())
    endpoint = expected["endpoint"]
    result = reassemble_transcript(endpoint, data)
    assert result == slow_path(endpoint, data)
    assert result.response == expected["response"]
    assert (result.done, result.complete, result.error, result.parse_errors) == (
        expected["done"],
        expected["complete"],
        expected["error"],
        expected["parse_errors"],
    )


def test_plain_openai_shapes_take_the_fast_path():
    chat = FIXTURES[[p.stem for p in FIXTURES].index("chat_text")].read_bytes()
    assert transcript._decode_simple(chat) is not None
    assert transcript._decode_simple(b"data: {}\r\n\r\n") is None
    assert transcript._decode_simple(b": keepalive\n\ndata: {}\n\n") is None
    assert transcript._decode_simple(b"id: 1\ndata: {}\n\n") is None
    assert transcript._decode_simple(b"data: {bad json\n\n") is None
    with pytest.raises(ValueError):
        reassemble_transcript("embeddings", b"")


chunk = st.fixed_dictionaries(
    {
        "id": st.just("chatcmpl-1"),
        "object": st.just("chat.completion.chunk"),
        "model": st.sampled_from(["m", "m2"]),
        "system_fingerprint": st.none() | st.just("fp"),
        "choices": st.lists(
            st.fixed_dictionaries(
                {
                    "index": st.integers(0, 2),
                    "delta": st.fixed_dictionaries(
                        {},
                        optional={
                            "content": st.text(max_size=5),
                            "role": st.just("assistant"),
                            "refusal": st.none() | st.text(max_size=3),
                        },
                    ),
                    "finish_reason": st.none() | st.just("stop"),
                }
            ),
            max_size=2,
        ),
    }
)
block = st.one_of(
    chunk.map(lambda c: b"data: " + orjson.dumps(c)),
    st.just(b"data: [DONE]"),
    st.just(b""),
    st.just(b": ping"),
    chunk.map(lambda c: b"event: x\ndata: " + orjson.dumps(c)),
    st.binary(max_size=8).map(lambda b: b"data: " + b),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(block, max_size=12), st.sampled_from([b"\n\n", b"\n"]), st.booleans())
def test_generated_streams_match_the_full_decoder(blocks, separator, terminated):
    data = separator.join(blocks) + (separator if terminated else b"")
    for endpoint in ("chat/completions", "completions", "responses"):
        assert reassemble_transcript(endpoint, data) == slow_path(endpoint, data)
