"""Reassemble a whole captured stream from its bytes, with a fast path for the common shape.

``reassemble_transcript(endpoint, transcript)`` gives the same result as feeding the bytes to
``SSEDecoder`` and calling ``reassemble``; capture calls it once per recorded stream, so it is
where reassembly cost is paid (bench/RESULTS.md).
"""

from __future__ import annotations

import orjson

from proxy._reassemble_responses import fold_response_events
from proxy.reassemble import (
    ENDPOINTS,
    ReassemblyResult,
    _endpoint_key,
    _fold_choices,
    _normalize_chat_choice,
    _normalize_completion_choice,
    reassemble,
)
from proxy.sse import SSEDecoder
from proxy.types import JSONObject

_BOM = b"\xef\xbb\xbf"


def reassemble_transcript(endpoint: str, transcript: bytes) -> ReassemblyResult:
    """Reassemble a whole captured stream (bytes); same result as decoding it with
    ``SSEDecoder`` (``feed`` then ``close()``) and calling ``reassemble``.

    Streams in the shape OpenAI-compatible servers send (``data: <json>`` blocks, optionally
    with one ``event:`` line, ``\n`` line ends) take a fast path that splits with C-level
    ``bytes`` methods and parses the JSON from bytes; anything else (CR line ends, comments,
    ids, multi-line data, invalid UTF-8 or JSON) goes through the full WHATWG decoder.
    """
    key = _endpoint_key(endpoint)
    if key not in ENDPOINTS:
        raise ValueError(f"no reassembler for endpoint {endpoint!r}; expected one of {ENDPOINTS}")
    decoded = _decode_simple(transcript)
    if decoded is None:
        decoder = SSEDecoder()
        events = decoder.feed(transcript)
        events += decoder.close()
        return reassemble(key, events)
    payloads, done, parse_errors = decoded
    if key == "responses":
        response, done, complete, error = fold_response_events(payloads)
        return ReassemblyResult(response, done, complete, error, parse_errors)
    if key == "chat/completions":
        return _fold_choices(
            payloads, done, parse_errors, "chat.completion", _normalize_chat_choice
        )
    return _fold_choices(
        payloads, done, parse_errors, "text_completion", _normalize_completion_choice
    )


def _decode_simple(
    transcript: bytes,
) -> tuple[list[tuple[str, JSONObject]], bool, int] | None:
    """The fast path of ``reassemble_transcript``; None when the stream needs the full decoder."""
    if b"\r" in transcript or b"\n:" in transcript or transcript.startswith((b":", _BOM)):
        return None
    blocks = transcript.split(b"\n\n")
    blocks.pop()  # after the last blank line: an unterminated event, discarded as by WHATWG
    payloads: list[tuple[str, JSONObject]] = []
    for block in blocks:
        name = "message"
        if block.startswith(b"event: "):
            name_line, _, block = block.partition(b"\n")
            name = name_line[7:].decode("utf-8", "replace") or "message"
        if not block.startswith(b"data: ") or b"\n" in block:
            if not block and name == "message":
                continue  # extra blank lines dispatch nothing
            return None
        data = block[6:]
        if data.startswith(b"[DONE]"):
            return payloads, True, 0
        if not data or data.isspace():
            continue
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None  # the full decoder counts it (and replaces invalid UTF-8 first)
        if not isinstance(value, dict):
            return None
        payloads.append((name, value))
    return payloads, False, 0
