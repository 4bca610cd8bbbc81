"""Reassemble a whole captured stream from its bytes, with a fast path for the common shape.

``reassemble_transcript(endpoint, transcript)`` gives the same result as feeding the bytes to
``SSEDecoder`` and calling ``reassemble``; capture calls it once per recorded stream, so it is
where reassembly cost is paid (bench/RESULTS.md).
"""

from __future__ import annotations

import re
from typing import Final

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
        split = _split_data_only(transcript)
        if split is not None:
            folded = _fold_chat(*split)
            if folded is not None:
                return folded
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
    split = _split_data_only(transcript)
    if split is None:
        return None
    pieces, done = split
    loads = orjson.loads
    try:
        chunks = [loads(piece) for piece in pieces]
    except orjson.JSONDecodeError:
        return None  # [DONE] before the end, blank data, invalid JSON: the loop handles these
    for chunk in chunks:
        if chunk.__class__ is not dict:
            return None
    return chunks, done


def _split_data_only(transcript: bytes) -> tuple[list[bytes], bool] | None:
    """``_decode_data_only`` before parsing: each event's data (JSON still to be checked), and
    whether ``[DONE]`` ended the stream."""
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
    pieces = body.split(b"\n\ndata: ")
    # The separators cannot overlap and hold two "\n" each: when that accounts for every "\n"
    # in the body, no block holds a second line and every separator is followed by a data line.
    if body.count(b"\n") != 2 * (len(pieces) - 1):
        return None
    done = pieces[-1].startswith(b"[DONE]")
    if done:
        pieces.pop()  # the usual place; an earlier [DONE] fails to parse later
    return pieces, done


_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"')  # one JSON string literal, as bytes
_CONTENT_AT: Final = b'"delta":{"content":'
_OBFUSCATION_AT: Final = b'"obfuscation":'


class _Template:
    """A plain content chunk's bytes with its string values cut out: the content, and the
    ``obfuscation`` padding OpenAI adds to every chunk (dropped from the result anyway).

    A later event whose bytes are the same segments around other string literals parses to the
    same object but for those strings, so folding it is appending its content: no need to parse
    the rest of it, or to fold it key by key (``_fold_chat``).
    """

    __slots__ = ("content_hole", "index", "segments", "top")

    def __init__(self, segments: list[bytes], content_hole: int, index: int, top: JSONObject):
        self.segments = segments
        self.content_hole = content_hole
        self.index = index
        self.top = top  # what the chunk sets at the top level

    @classmethod
    def of(cls, piece: bytes, chunk: JSONObject, raw: JSONObject, index: int) -> _Template | None:
        """The template of ``piece`` (parsed: ``chunk``, its one choice ``raw``), if it has
        one place for the content and at most one for the padding."""
        if piece.count(_CONTENT_AT) != 1:
            return None
        holes = [(piece.index(_CONTENT_AT) + len(_CONTENT_AT), True)]
        if chunk.get("obfuscation").__class__ is str:
            if piece.count(_OBFUSCATION_AT) != 1:
                return None
            holes.append((piece.index(_OBFUSCATION_AT) + len(_OBFUSCATION_AT), False))
        holes.sort()
        segments: list[bytes] = []
        content_hole = 0
        position = 0
        for start, is_content in holes:
            literal = _STRING.match(piece, start)
            if literal is None or start < position:
                return None
            if is_content:
                content_hole = len(segments)
            segments.append(piece[position:start])
            position = literal.end()
        segments.append(piece[position:])
        # Proof that the holes are where they were taken to be: other strings put in them
        # change the choice's content and the padding, and nothing else.
        probe = {**chunk, "choices": [{**raw, "delta": {"content": "\x00c"}}]}
        fills = [b'"\\u0000c"']
        if len(holes) == 2:
            probe["obfuscation"] = "\x00o"
            fills.insert(1 - content_hole, b'"\\u0000o"')
        filled = segments[0] + b"".join(
            f + rest for f, rest in zip(fills, segments[1:], strict=True)
        )
        if orjson.loads(filled) != probe:
            return None
        top = {key: value for key, value in chunk.items() if value is not None}
        return cls(segments, content_hole, index, top)

    def content(self, piece: bytes) -> str | None:
        """The content of ``piece`` when it is this template's shape (None: it is not, or its
        strings are not valid JSON: the full parse decides then)."""
        segments = self.segments
        first, last = segments[0], segments[-1]
        if not (piece.startswith(first) and piece.endswith(last)):
            return None
        end = len(piece) - len(last)
        try:
            if len(segments) == 2:  # the content alone: whatever lies between must be a string
                text = orjson.loads(piece[len(first) : end])
            else:
                literal = _STRING.match(piece, len(first))
                if literal is None:
                    return None
                middle = literal.end()
                if not piece.startswith(segments[1], middle):
                    return None
                other = piece[middle + len(segments[1]) : end]
                if self.content_hole == 0:
                    orjson.loads(other)  # the padding: valid JSON, as the full parse requires
                    text = orjson.loads(literal.group())
                else:
                    orjson.loads(literal.group())
                    text = orjson.loads(other)
        except orjson.JSONDecodeError:
            return None
        return text if text.__class__ is str else None


_PLAIN_CHOICE_KEYS = frozenset({"index", "delta", "logprobs", "finish_reason"})


def _fold_chat(pieces: list[bytes], done: bool) -> ReassemblyResult | None:
    """``_fold_choices`` for chat over the events' data, with shortcuts for the commonest chunk
    of all; None when an event is not a JSON object (the slower paths take the stream then).

    A choice ``{"index": i, "delta": {"content": "<text>"}, "logprobs": null,
    "finish_reason": null}`` appends its text to a list instead of going through
    ``merge_delta``; the list is joined into the message (exactly what string concatenation
    would have built, the key inserted where it would have been) before any other fold of a
    choice and at the end. A chunk made of such a choice alone gives its bytes as a template
    (``_Template``): the events after it in the same shape are not parsed at all, only their
    content. Anything else takes ``_fold_choice``, so results are identical.
    """
    top: JSONObject = {}
    choices: dict[int, _Choice] = {}
    error: JSONObject | None = None
    pending: dict[int, list[str]] = {}  # choice index -> content so far, as fragments
    plain_keys = _PLAIN_CHOICE_KEYS
    loads = orjson.loads
    template: _Template | None = None
    templates_left = 2  # templates this stream may still build
    top_is_template = False  # the template's values are the latest ones in ``top``
    try:
        for piece in pieces:
            if template is not None:
                text = template.content(piece)
                if text is not None and _add_content(choices, pending, template.index, text):
                    if not top_is_template:
                        top.update(template.top)
                        top_is_template = True
                    continue
            chunk = loads(piece)
            if chunk.__class__ is not dict:
                return None
            top_is_template = False
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
                        if content.__class__ is str and _add_content(
                            choices, pending, index, content
                        ):
                            if len(raw_choices) == 1:
                                # A plain chunk no template described: its own bytes may
                                # describe the chunks after it (a stream whose plain chunks
                                # all differ stops paying for templates soon).
                                templates_left -= 1
                                template = (
                                    _Template.of(piece, chunk, raw, index)
                                    if templates_left >= 0
                                    else None
                                )
                            continue
                    if pending:
                        _join_pending(choices, pending)
                    _fold_choice(choices, raw, True)
            if None in chunk.values():
                top.update((key, value) for key, value in chunk.items() if value is not None)
            else:
                top.update(chunk)  # the latest non-null value wins
    except orjson.JSONDecodeError:
        return None  # [DONE] before the end, blank data, invalid JSON: the loop handles these
    if pending:
        _join_pending(choices, pending)
    return _finish_fold(
        top, choices, error, done, 0, "chat.completion", _normalize_chat_choice, True
    )


def _add_content(
    choices: dict[int, _Choice], pending: dict[int, list[str]], index: int, content: str
) -> bool:
    """Add ``content`` to choice ``index``'s fragments, starting them when needed (False: its
    content so far is not a string, so the full fold must take this delta)."""
    parts = pending.get(index)
    if parts is not None:
        parts.append(content)
        return True
    choice = choices.get(index)
    current = choice.content.get("content") if choice is not None else None
    if current is not None and current.__class__ is not str:
        return False
    if choice is None:
        choices[index] = choice = _Choice()
    if current is None:
        choice.content["content"] = ""  # the key's place in the message
    pending[index] = [current or "", content]
    return True


def _join_pending(choices: dict[int, _Choice], pending: dict[int, list[str]]) -> None:
    for index, parts in pending.items():
        choices[index].content["content"] = "".join(parts)
    pending.clear()
