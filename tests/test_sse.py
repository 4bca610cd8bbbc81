"""proxy.sse: WHATWG event-stream rules, chunking invariance, and the openai SDK's decoder."""

from __future__ import annotations

import random
from dataclasses import dataclass

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai._streaming import SSEDecoder as SDKDecoder

from proxy.sse import SSEDecoder, SSEEvent
from tests._sse_fixtures import (
    FAST,
    SLOW,
    Fixture,
    decode,
    fixture_params,
    one_byte_at_a_time,
    skip_unless_slow_selected,
    split_at,
)


def events_of(data: bytes) -> list[SSEEvent]:
    return decode([data])[0]


def ev(data: str, event: str = "message", id: str | None = None, retry: int | None = None):
    return SSEEvent(data, event, id, retry)


# --- the golden corpus (every split offset: see test_reassemble.py) ------------------------------


@pytest.mark.parametrize("fixture", fixture_params())
def test_fixture_decodes_the_same_one_byte_at_a_time(fixture: Fixture) -> None:
    assert decode(one_byte_at_a_time(fixture.raw)) == decode([fixture.raw])


@pytest.mark.parametrize("fixture", fixture_params())
def test_fixture_matches_the_openai_sdk_decoder(fixture: Fixture) -> None:
    assert sdk_events([fixture.raw]) == events_of(fixture.raw)


# --- WHATWG rules, one by one --------------------------------------------------------------------

WHATWG_CASES = [
    pytest.param(b"data: a\n\n", [ev("a")], id="lf"),
    pytest.param(b"data: a\r\n\r\n", [ev("a")], id="crlf"),
    pytest.param(b"data: a\r\r", [ev("a")], id="cr"),
    pytest.param(b"data: a\r\n\rdata: b\n\r\n", [ev("a"), ev("b")], id="mixed-line-ends"),
    pytest.param(b"data: a\r\rdata: b\r\r", [ev("a"), ev("b")], id="cr-cr-is-two-line-ends"),
    pytest.param(b"data: a\ndata: b\ndata:c\n\n", [ev("a\nb\nc")], id="multi-line-data"),
    pytest.param(b"data: a\n\n\n\n\ndata: b\n\n", [ev("a"), ev("b")], id="extra-blank-lines"),
    pytest.param(b"data\n\n", [ev("")], id="field-without-colon"),
    pytest.param(b"data:\n\n", [ev("")], id="empty-data"),
    pytest.param(b"data\ndata\n\n", [ev("\n")], id="two-empty-data-lines"),
    pytest.param(b"data:  a \n\n", [ev(" a ")], id="only-one-space-stripped"),
    pytest.param(b"data:a\n\n", [ev("a")], id="no-space"),
    pytest.param(b"data: a:b: c\n\n", [ev("a:b: c")], id="colon-in-value"),
    pytest.param(b"data:\ta\n\n", [ev("\ta")], id="tab-is-not-stripped"),
    pytest.param(b": hello\ndata: a\n:\n\n", [ev("a")], id="comments"),
    pytest.param(b": keep-alive\n\n:\n\n", [], id="comment-only-blocks"),
    pytest.param(b"foo: bar\nData: x\ndata : y\ndata: a\n\n", [ev("a")], id="unknown-fields"),
    pytest.param(b"event: add\ndata: a\n\n", [ev("a", "add")], id="event-type"),
    pytest.param(b"event\ndata: a\n\n", [ev("a")], id="empty-event-is-message"),
    pytest.param(b"event: x\ndata: a\n\ndata: b\n\n", [ev("a", "x"), ev("b")], id="type-resets"),
    pytest.param(b"event: x\n\ndata: b\n\n", [ev("b")], id="no-data-no-dispatch"),
    pytest.param(b"event: a\nevent: b\ndata: c\n\n", [ev("c", "b")], id="last-event-wins"),
    pytest.param(b"id: 1\ndata: a\n\ndata: b\n\n", [ev("a", id="1"), ev("b", id="1")], id="id"),
    pytest.param(
        b"id: 1\ndata: a\n\nid\ndata: b\n\n", [ev("a", id="1"), ev("b", id="")], id="id-reset"
    ),
    pytest.param(b"id: 1\n\ndata: b\n\n", [ev("b", id="1")], id="id-without-event-persists"),
    pytest.param(
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        [ev("a", id="1"), ev("b", id="1")],
        id="id-with-nul",
    ),
    pytest.param(
        b"retry: 1500\ndata: a\n\ndata: b\n\n", [ev("a", retry=1500), ev("b")], id="retry"
    ),
    pytest.param(
        b"retry: +5\nretry: 1.5\nretry:  5\nretry\nretry: 5x\ndata: a\n\n",
        [ev("a")],
        id="bad-retry",
    ),
    pytest.param("retry: ١٢\ndata: a\n\n".encode(), [ev("a")], id="non-ascii-digits"),
    pytest.param(b"retry: 10\n\n", [], id="retry-alone-does-not-dispatch"),
    pytest.param(b"data: a\x00b\n\n", [ev("a\x00b")], id="nul-in-data"),
    pytest.param(b"data: \xff\xfe a\n\n", [ev("\ufffd\ufffd a")], id="invalid-utf8"),
    pytest.param(b"data: \xe2\x82\n\n", [ev("\ufffd")], id="truncated-utf8"),
    pytest.param("data: é中😀\n\n".encode(), [ev("é中😀")], id="utf8"),
    pytest.param("data: a\u2028b\x85c\n\n".encode(), [ev("a\u2028b\x85c")], id="unicode-breaks"),
    pytest.param(b"\xef\xbb\xbfdata: a\n\n", [ev("a")], id="bom"),
    pytest.param(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n", [ev("b")], id="one-bom-only"),
    pytest.param(b"data: a\n\n\xef\xbb\xbfdata: b\n\n", [ev("a")], id="bom-later-is-data"),
    pytest.param(b"\xefdata: a\n\ndata: b\n\n", [ev("b")], id="bom-prefix-then-other"),
    pytest.param(b"\xef\xbb", [], id="partial-bom-only"),
    pytest.param(b"data: a\n\ndata: b", [ev("a")], id="unterminated-line-discarded"),
    pytest.param(b"data: a\n\ndata: b\n", [ev("a")], id="unfinished-event-discarded"),
    pytest.param(b"", [], id="empty"),
]


@pytest.mark.parametrize(("data", "expected"), WHATWG_CASES)
def test_whatwg_rule(data: bytes, expected: list[SSEEvent]) -> None:
    assert events_of(data) == expected
    assert decode(one_byte_at_a_time(data))[0] == expected
    for offset in range(len(data) + 1):
        assert decode(split_at(data, [offset]))[0] == expected


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    # Had the LF after "a\r" been read as a second line end, "a" would dispatch alone.
    assert decode([b"data: a\r", b"\ndata: b\n\n"])[0] == [ev("a\nb")]
    assert decode([b"data: a\r", b"", b"\ndata: b\n\n"])[0] == [ev("a\nb")]
    assert decode([b"data: a\r", b"\r", b"\n\n"])[0] == [ev("a")]


def test_bom_split_at_every_byte() -> None:
    data = b"\xef\xbb\xbfdata: a\n\n"
    assert decode(one_byte_at_a_time(data))[0] == [ev("a")]
    assert decode([b"", b"\xef", b"", b"\xbb", b"\xbf", b"data: a\n\n"])[0] == [ev("a")]


def test_pending_reports_a_stream_cut_mid_event() -> None:
    assert decode([b"data: a\n\n"])[1] is False
    assert decode([b"data: a\n\n: comment\n"])[1] is False
    assert decode([b"data: a\n\n: comm"])[1] is True
    assert decode([b"data: a\n\ndata: b\n"])[1] is True
    assert decode([b"data: a\n\nevent: x\n"])[1] is True
    assert decode([b"\xef"])[1] is True


def test_close_can_dispatch_the_unfinished_event() -> None:
    for tail in (b"data: b", b"data: b\n", b"data: b\r"):
        decoder = SSEDecoder()
        assert decoder.feed(b"data: a\n\n" + tail) == [ev("a")]
        assert decoder.pending is True
        assert decoder.close(dispatch_incomplete=True) == [ev("b")]
        assert decoder.pending is True  # still says the stream was cut
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\n")
    assert decoder.close(dispatch_incomplete=True) == []
    assert decoder.pending is False


def test_close_is_final() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a")
    assert decoder.close() == []
    assert decoder.close(dispatch_incomplete=True) == []
    with pytest.raises(RuntimeError):
        decoder.feed(b"\n\n")


def test_reconnection_time_and_last_event_id() -> None:
    decoder = SSEDecoder()
    assert decoder.retry is None and decoder.last_event_id is None
    decoder.feed(b"retry: 3000\nid: 7\n\nretry: x\n\n")
    assert decoder.retry == 3000
    assert decoder.last_event_id == "7"


def test_long_line_in_small_chunks() -> None:
    payload = b"x" * 100_000
    pieces = [b"data: "] + [payload[i : i + 7] for i in range(0, len(payload), 7)] + [b"\n\n"]
    assert decode(pieces)[0] == [ev(payload.decode())]


# --- properties (reliability.md T17) -------------------------------------------------------------

line_text = st.text(st.characters(exclude_characters="\r\n", codec="utf-8"), max_size=12)
multibyte = st.sampled_from(["é", "中", "😀", "a", " ", ":", "\x00", "\ufeff"])
value_text = st.lists(st.one_of(multibyte, line_text), max_size=4).map("".join)


@dataclass(frozen=True)
class Block:
    data: tuple[str, ...]
    event: str | None
    id: str | None
    retry: int | None
    comments: tuple[str, ...]


blocks = st.builds(
    Block,
    data=st.lists(value_text, min_size=1, max_size=4).map(tuple),
    event=st.none() | value_text,
    id=st.none() | value_text.filter(lambda v: "\x00" not in v),
    retry=st.none() | st.integers(0, 10**12),
    comments=st.lists(value_text, max_size=2).map(tuple),
)


@dataclass(frozen=True)
class Stream:
    raw: bytes
    expected: list[SSEEvent]


@st.composite
def streams(draw: st.DrawFn, *, sdk_compatible: bool = False) -> Stream:
    """A serialised event list and the events it must decode to.

    Line ends, the optional space after the colon and extra blank lines come from a seeded
    ``random.Random``: far cheaper to generate than one hypothesis draw each.
    """
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    out: list[str] = []
    previous_end = ""

    def line(text: str) -> None:
        nonlocal previous_end
        end = rng.choice(("\n", "\r\n", "\r"))
        if previous_end == "\r" and not text and end == "\n":
            end = "\r\n"  # "\r" then "\n" would read as one CRLF
        out.append(text + end)
        previous_end = end

    def field(name: str, value: str) -> None:
        spaced = value.startswith(" ") or rng.random() < 0.5
        line(f"{name}:{' ' if spaced else ''}{value}")

    expected: list[SSEEvent] = []
    last_id: str | None = None
    bom = not sdk_compatible and draw(st.booleans())
    for block in draw(st.lists(blocks, max_size=6)):
        fields: list[tuple[str, str]] = [("data", value) for value in block.data]
        if block.event is not None:
            fields.append(("event", block.event))
        if block.id is not None:
            fields.append(("id", block.id))
            last_id = block.id
        if block.retry is not None:
            fields.append(("retry", str(block.retry)))
        fields = draw(st.permutations(fields))
        data_lines = [value for name, value in fields if name == "data"]
        for comment in block.comments:
            line(":" + comment)
        for name, value in fields:
            field(name, value)
        line("")
        if not sdk_compatible and rng.random() < 0.3:
            line("")  # an extra blank line dispatches nothing
        expected.append(
            SSEEvent("\n".join(data_lines), block.event or "message", last_id, block.retry)
        )
    raw = ("\ufeff" if bom else "") + "".join(out)
    return Stream(raw.encode(), expected)


offsets = st.lists(st.integers(0, 10_000), max_size=8)


def check_round_trip(stream: Stream, cuts: list[int]) -> None:
    cuts = [cut % (len(stream.raw) + 1) for cut in cuts]
    events, pending = decode(split_at(stream.raw, cuts))
    assert events == stream.expected
    assert pending is False


@FAST
@given(streams(), offsets)
def test_round_trip_at_any_split(stream: Stream, cuts: list[int]) -> None:
    check_round_trip(stream, cuts)


@pytest.mark.slow
@pytest.mark.timeout(900)
@SLOW
@given(streams(), offsets)
def test_round_trip_at_any_split_slow(pytestconfig, stream: Stream, cuts: list[int]) -> None:
    skip_unless_slow_selected(pytestconfig)
    check_round_trip(stream, cuts)


sse_tokens = st.sampled_from(
    [b"data:", b"data: ", b"event: ", b"id: ", b"retry: ", b":", b"\r", b"\n", b"\r\n", b"\r\n\r\n"]
    + [b"\n\n", b"\xef\xbb\xbf", b"\xef", b"\xbb", "é".encode(), "😀".encode(), b"\xf0\x9f"]
    + [b"\xff", b"x", b" ", b"\x00", b"12", b"[DONE]", b"{}"]
)
noise = st.lists(st.one_of(sse_tokens, st.binary(max_size=4)), max_size=40).map(b"".join)


def check_chunking_invariance(data: bytes, cuts: list[int]) -> None:
    cuts = [cut % (len(data) + 1) for cut in cuts]
    assert decode(split_at(data, cuts)) == decode([data])
    assert decode(one_byte_at_a_time(data)) == decode([data])


@FAST
@given(noise, offsets)
def test_arbitrary_bytes_decode_the_same_at_any_split(data: bytes, cuts: list[int]) -> None:
    check_chunking_invariance(data, cuts)


@pytest.mark.slow
@pytest.mark.timeout(900)
@SLOW
@given(noise, offsets)
def test_arbitrary_bytes_decode_the_same_at_any_split_slow(pytestconfig, data, cuts) -> None:
    skip_unless_slow_selected(pytestconfig)
    check_chunking_invariance(data, cuts)


# --- differential check against the openai SDK ---------------------------------------------------
#
# openai._streaming.SSEDecoder is private API. Pinned expectation (openai 3.x, checked on 3.57.0):
# ``SSEDecoder().iter_bytes(Iterator[bytes]) -> Iterator[ServerSentEvent]`` with ``.event``
# (``None`` for the default type), ``.data``, ``.id`` and ``.retry``. It agrees with WHATWG on
# streams of well-formed events, and differs on the rest (pinned in test_sdk_differences below).


def test_sdk_decoder_api_is_what_we_pinned() -> None:
    assert openai.__version__.split(".")[0] == "3"
    events = list(SDKDecoder().iter_bytes(iter([b"event: x\nid: 1\nretry: 5\ndata: a\n\n"])))
    assert [(e.event, e.data, e.id, e.retry) for e in events] == [("x", "a", "1", 5)]


def sdk_events(pieces: list[bytes]) -> list[SSEEvent]:
    return [
        SSEEvent(e.data, e.event or "message", e.id, e.retry)
        for e in SDKDecoder().iter_bytes(iter(pieces))
    ]


def check_against_sdk(stream: Stream, cuts: list[int]) -> None:
    pieces = split_at(stream.raw, [cut % (len(stream.raw) + 1) for cut in cuts])
    assert sdk_events(pieces) == decode(pieces)[0] == stream.expected


@FAST
@given(streams(sdk_compatible=True), offsets)
def test_same_events_as_the_openai_sdk(stream: Stream, cuts: list[int]) -> None:
    check_against_sdk(stream, cuts)


@pytest.mark.slow
@pytest.mark.timeout(900)
@SLOW
@given(streams(sdk_compatible=True), offsets)
def test_same_events_as_the_openai_sdk_slow(pytestconfig, stream: Stream, cuts: list[int]) -> None:
    skip_unless_slow_selected(pytestconfig)
    check_against_sdk(stream, cuts)


def test_sdk_differences() -> None:
    """Where the SDK's decoder departs from WHATWG; a change here means the SDK changed."""
    # It dispatches blocks without data, and once an id is set, every blank line.
    assert sdk_events([b"event: ping\n\n"]) == [ev("", "ping")]
    assert events_of(b"event: ping\n\n") == []
    assert sdk_events([b"id: 1\ndata: a\n\n\n"]) == [ev("a", id="1"), ev("", id="1")]
    assert sdk_events([b"retry: 5\n\n"]) == [ev("", retry=5)]
    # It keeps a byte order mark, so the first field name is "\ufeffdata" and is ignored.
    assert sdk_events([b"\xef\xbb\xbfdata: a\n\n"]) == []
    # It parses retry with int(): signs, underscores and non-ASCII digits pass.
    assert sdk_events([b"retry: +1_0\ndata: a\n\n"]) == [ev("a", retry=10)]
    # It decodes strictly: invalid UTF-8 raises instead of becoming U+FFFD.
    with pytest.raises(UnicodeDecodeError):
        sdk_events([b"data: \xff\n\n"])
