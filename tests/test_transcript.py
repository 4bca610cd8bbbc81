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


def _dumped(result):
    """The result with the response as bytes: key order counts, as it does once stored."""
    return (orjson.dumps(result.response), result.done, result.complete, result.error)


# Chunks in the shapes the data-only fast path and its content shortcut special-case, mixed
# with everything that must leave them: other delta keys, non-string content, extra choice
# keys, logprobs, errors, missing or odd indexes.
plain_delta = st.fixed_dictionaries({"content": st.text(max_size=4)})
odd_delta = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["assistant", ""]),
            "content": st.none() | st.text(max_size=3) | st.just([{"type": "text"}]) | st.just(7),
            "refusal": st.none() | st.text(max_size=3),
            "tool_calls": st.just([{"index": 0, "id": "c", "function": {"arguments": "{"}}]),
        },
    ),
    st.just({"content": 3}),
    st.just({"content": None}),
    st.just({"refusal": "no"}),
)
fast_choice = st.fixed_dictionaries(
    {"delta": st.one_of(plain_delta, odd_delta)},
    optional={
        "index": st.sampled_from([0, 1, "0", None]),
        "logprobs": st.none() | st.just({"content": [{"token": "a"}]}),
        "finish_reason": st.none() | st.just("stop"),
        "extra": st.just(1),
    },
)
fast_chunk = st.fixed_dictionaries(
    {"id": st.just("c1"), "choices": st.lists(fast_choice, max_size=2)},
    optional={
        "model": st.none() | st.just("m"),
        "usage": st.just({"total_tokens": 3}),
        "error": st.none() | st.just({"message": "boom"}),
        "obfuscation": st.just("xx"),
    },
)


@settings(max_examples=400, deadline=None)
@given(st.lists(fast_chunk, max_size=14), st.booleans(), st.booleans())
def test_data_only_streams_match_the_full_decoder_key_order_included(chunks, done, tail):
    _assert_chat_stream_matches(chunks, done, b'data: {"cut' if tail else b"")


def _assert_chat_stream_matches(chunks: list[dict], done: bool, tail: bytes = b"") -> None:
    """Fast and full decoders agree on the stream of ``chunks``, key order included."""
    data = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    if done:
        data += b"data: [DONE]\n\n"
    data += tail
    fast = reassemble_transcript("chat/completions", data)
    slow = slow_path("chat/completions", data)
    assert fast == slow
    assert _dumped(fast) == _dumped(slow)


def test_the_data_only_path_takes_plain_streams_and_leaves_the_rest():
    chat = FIXTURES[[p.stem for p in FIXTURES].index("chat_text")].read_bytes()
    assert transcript._decode_data_only(chat) is not None
    for data in (
        b"data: {}\n\ndata: [DONE]\n\ndata: {}\n\n",  # [DONE] before the end
        b"data: {}\n\n\n\ndata: {}\n\n",  # a blank block between events
        b"data: {}\n\ndata: \n\n",  # empty data
        b"data: {}\ndata: {}\n\n",  # two data lines in one event
        b"event: x\ndata: {}\n\n",
        b"data: {}\n\n: ping\n\n",
        b"data: []\n\n",  # not an object
        b"data: {}\r\n\r\n",
        b"data:{}\n\n",
        b"data: {}\n\n\n",
        b"data: {}",
    ):
        assert transcript._decode_data_only(data) is None, data
        assert reassemble_transcript("chat/completions", data) == slow_path(
            "chat/completions", data
        )
    assert transcript._decode_data_only(b'data: {"a":1}\n\ndata: [DONE]\n\n') == (
        [{"a": 1}],
        True,
    )
    assert transcript._decode_data_only(b'data: {"a":1}\n\ndata: {"b') == ([{"a": 1}], False)


# Streams where most events share one frame and differ only in their content and padding (the
# template shortcut), with tricky strings and the odd event that breaks the pattern.
tricky = ["a", '"', "\\", "\n", "é", "\u2028", "}", "{", "😀", "\x00"]
tricky_text = st.text(alphabet=st.sampled_from(tricky), max_size=6)
framed_chunk = st.builds(
    lambda content, pad, index, model, extra: {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": index, "delta": {"content": content}, "finish_reason": None}],
        **({"obfuscation": pad} if pad is not None else {}),
        **extra,
    },
    tricky_text,
    st.none() | st.text(max_size=4),
    st.sampled_from([0, 0, 0, 1]),
    st.sampled_from(["m", "m", "m", "m2"]),
    st.sampled_from([{}, {}, {}, {"usage": None}, {"x": {"delta": {"content": "decoy"}}}]),
)
templated_stream = st.lists(
    st.one_of(framed_chunk, framed_chunk, framed_chunk, fast_chunk), max_size=20
)


@settings(max_examples=400, deadline=None)
@given(templated_stream, st.booleans())
def test_templated_streams_match_the_full_decoder_key_order_included(chunks, done):
    _assert_chat_stream_matches(chunks, done)


def test_a_template_never_takes_an_event_it_does_not_describe():
    frame = b'{"id":"c","choices":[{"index":0,"delta":{"content":%s},"finish_reason":null}]}'
    events = [frame % b'"Hel"', frame % b'"lo"', frame % b'"\\u00e9\\"\\\\"', frame % b"7"]
    events += [frame % b'"x" ', frame % b'"unterminated', frame % b'"bad \\q escape"']
    for tail in range(3, len(events) + 1):
        data = b"".join(b"data: " + e + b"\n\n" for e in events[:tail])
        assert reassemble_transcript("chat/completions", data) == slow_path(
            "chat/completions", data
        ), tail
    good = b"".join(b"data: " + e + b"\n\n" for e in events[:3])
    message = reassemble_transcript("chat/completions", good).response["choices"][0]["message"]
    assert message["content"] == 'Hello\u00e9"\\'


def test_a_stream_whose_plain_chunks_all_differ_still_reassembles_exactly():
    """Every chunk in its own frame (a server that stamps each one): no template describes the
    next chunk, templating gives up after a couple, and the answer is the full decoder's."""
    chunks = [
        {"id": "c", "created": n, "choices": [{"index": 0, "delta": {"content": f"w{n} "}}]}
        for n in range(12)
    ]
    _assert_chat_stream_matches(chunks, True)
    data = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    message = reassemble_transcript("chat/completions", data).response["choices"][0]["message"]
    assert message["content"] == "".join(f"w{n} " for n in range(12))
