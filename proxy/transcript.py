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
    _as_error,
    _Choice,
    _endpoint_key,
    _finish_fold,
    _fold_choice,
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
    if key == "chat/completions":
        data_only = _decode_data_only(transcript)
        if data_only is not None:
            return _fold_chat(*data_only)
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
    data_only = _decode_data_only(transcript)
    if data_only is not None:
        chunks, done = data_only
        return [("message", chunk) for chunk in chunks], done, 0
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


def _decode_data_only(transcript: bytes) -> tuple[list[JSONObject], bool] | None:
    """The fastest path: every event is one ``data: <JSON object>`` line, ``\n`` line ends.

    Returns the objects in order and whether ``[DONE]`` ended the stream, or None when the
    stream is anything else (``_decode_simple``'s loop or the full decoder take it then). No
    Python loop over the events besides the one that parses them.
    """
    if not transcript.startswith(b"data: ") or b"\r" in transcript:
        return None
    end = transcript.rfind(b"\n\n")  # what follows the last blank line is never dispatched
    if end < 0:
        return None
    # The complete blocks, minus the first "data: ": body.split(b"\n\n") are the blocks
    # ``_decode_simple`` loops over. Every "\n" in body must belong to a block separator (so no
    # block holds a second line, and no separator is followed by one more "\n"), and every
    # separator must be followed by "data: " (so every block, the empty ones included, is a
    # data line). Then splitting at "\n\ndata: " yields exactly each block's data.
    body = transcript[6:end]
    separators = body.count(b"\n\n")
    if body.count(b"\n") != 2 * separators:
        return None
    pieces = body.split(b"\n\ndata: ")
    if len(pieces) != separators + 1:
        return None
    done = pieces[-1].startswith(b"[DONE]")
    if done:
        pieces.pop()  # the usual place; an earlier [DONE] fails to parse below
    loads = orjson.loads
    try:
        chunks = [loads(piece) for piece in pieces]
    except orjson.JSONDecodeError:
        return None  # [DONE] before the end, blank data, invalid JSON: the loop handles these
    for chunk in chunks:
        if chunk.__class__ is not dict:
            return None
    return chunks, done


_PLAIN_CHOICE_KEYS = frozenset({"index", "delta", "logprobs", "finish_reason"})


def _fold_chat(chunks: list[JSONObject], done: bool) -> ReassemblyResult:
    """``_fold_choices`` for chat, with a shortcut for the commonest chunk of all.

    A choice ``{"index": i, "delta": {"content": "<text>"}, "logprobs": null,
    "finish_reason": null}`` appends its text to a list instead of going through
    ``merge_delta``; the list is joined into the message (exactly what string concatenation
    would have built, the key inserted where it would have been) before any other fold of a
    choice and at the end. Anything else takes ``_fold_choice``, so results are identical.
    """
    top: JSONObject = {}
    choices: dict[int, _Choice] = {}
    error: JSONObject | None = None
    pending: dict[int, list[str]] = {}  # choice index -> content so far, as fragments
    plain_keys = _PLAIN_CHOICE_KEYS
    for chunk in chunks:
        chunk_error = chunk.get("error")
        if chunk_error:
            if error is None:
                error = _as_error(chunk_error)
            continue
        raw_choices = chunk.get("choices")
        if raw_choices.__class__ is list:
            for raw in raw_choices:
                if raw.__class__ is not dict:
                    continue
                delta = raw.get("delta")
                if (
                    delta.__class__ is dict
                    and len(delta) == 1
                    and raw.get("finish_reason") is None
                    and raw.get("logprobs") is None
                    and raw.keys() <= plain_keys
                ):
                    content = delta.get("content")
                    index = raw.get("index")
                    if index.__class__ is not int:
                        index = 0
                    parts = pending.get(index)
                    if parts is not None and content.__class__ is str:
                        parts.append(content)
                        continue
                    choice = choices.get(index)
                    current = choice.content.get("content") if choice is not None else None
                    if content.__class__ is str and (current is None or current.__class__ is str):
                        if choice is None:
                            choices[index] = choice = _Choice()
                        if current is None:
                            choice.content["content"] = ""  # the key's place in the message
                        pending[index] = [current or "", content]
                        continue
                if pending:
                    _join_pending(choices, pending)
                _fold_choice(choices, raw, True)
        if None in chunk.values():
            top.update((key, value) for key, value in chunk.items() if value is not None)
        else:
            top.update(chunk)  # the latest non-null value wins
    if pending:
        _join_pending(choices, pending)
    return _finish_fold(
        top, choices, error, done, 0, "chat.completion", _normalize_chat_choice, True
    )


def _join_pending(choices: dict[int, _Choice], pending: dict[int, list[str]]) -> None:
    for index, parts in pending.items():
        choices[index].content["content"] = "".join(parts)
    pending.clear()
