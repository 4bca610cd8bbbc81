"""The answer checks of the quality gates, and the keys the dataset builder groups examples by.

``response_format`` is checked with jsonschema-rs (compiled validators cached per schema, at most
``_MAX_VALIDATORS``; remote ``$ref`` is never fetched). A schema that cannot be compiled (OpenAI
would have refused the request, so only other upstreams send one) cannot judge the answer: the
answer must then only be JSON.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from storage._example_messages import Message, Unusable, answer_text, quoted

if TYPE_CHECKING:
    import jsonschema_rs

_MAX_VALIDATORS = 256
_DIGITS = re.compile(r"\d+")
_SPACE_RUNS = re.compile(rb"  +")
_ZERO_RUNS = re.compile(rb"00+")
# digits to 0 and the ASCII characters str.split() treats as whitespace to a space
_ASCII_TABLE = bytes.maketrans(b"123456789\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f", b"000000000" + b" " * 9)


def canonical(value: object) -> bytes:
    """Canonical JSON: keys sorted, no whitespace (orjson), so key order never matters."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def example_hashes(prompt: list[Message], answer: Message, rest: dict[str, Any]) -> tuple[str, str]:
    """(content hash, prompt hash): the sha256 of the canonical JSON of
    ``{"messages": prompt + [answer], **rest}`` and of ``{"messages": prompt, **rest}``, with
    the prompt serialised and hashed once.

    ``rest`` holds ``parallel_tool_calls`` and ``tools``, whose keys sort after ``messages``,
    so both canonical texts start with the prompt's messages.
    """
    messages = canonical(prompt)  # b"[...]"
    tail = canonical(rest)  # b"{...}"
    tail = b"," + tail[1:] if len(tail) > 2 else b"}"
    head = hashlib.sha256(b'{"messages":' + messages[:-1])
    of_prompt = head.copy()
    of_prompt.update(b"]" + tail)
    head.update((b"," if prompt else b"") + canonical(answer) + b"]" + tail)
    return head.hexdigest(), of_prompt.hexdigest()


def check_tool_arguments(answer: Message) -> None:
    """Every tool call's arguments must be the JSON text of an object."""
    for call in answer.get("tool_calls", ()):
        function = call["function"]
        try:
            arguments = orjson.loads(function["arguments"])
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise Unusable(
                "invalid_tool_arguments",
                f"tool call {quoted(function['name'])} arguments are not a JSON object",
            )


def check_format(answer: Message, response_format: object) -> None:
    """The answer's content against ``json_object`` / ``json_schema`` (skipped when the answer
    is only tool calls: the format binds the content)."""
    if not isinstance(response_format, dict):
        return
    kind = response_format.get("type")
    if kind not in ("json_object", "json_schema"):
        return
    text = answer_text(answer)
    if text is None or not text.strip():  # no content at all is the no_answer gate's
        return
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise Unusable("schema_violation", f"the answer is not JSON ({kind})") from None
    if kind == "json_object":
        if not isinstance(value, dict):
            raise Unusable("schema_violation", "the answer is not a JSON object (json_object)")
        return
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if schema is None:
        return
    validator = _validator(canonical(schema).decode())
    if validator is not None and not validator.is_valid(value):
        raise Unusable("schema_violation", "the answer does not match the json_schema")


@lru_cache(maxsize=_MAX_VALIDATORS)
def _validator(schema: str) -> jsonschema_rs.Validator | None:
    import jsonschema_rs  # on first use: importing it costs ~15 ms

    try:
        return jsonschema_rs.validator_for(schema, offline=True)
    except (ValueError, jsonschema_rs.ReferencingError):  # ValidationError is a ValueError
        return None


def near_key(prompt: list[Message]) -> str:
    """sha256 of the prompt's roles and text (content, refusals, tool-call names and
    arguments), lowercased, digit runs as ``0``, whitespace runs as one space, stripped."""
    pieces: list[str] = []
    for message in prompt:
        pieces.append(message["role"])
        content = message.get("content")
        if isinstance(content, str):
            pieces.append(content)
        elif content:
            pieces.extend(_part_text(part) for part in content)
        if len(message) > 2 or content is None:  # refusal, tool calls
            _extra_text(message, pieces)
    return hashlib.sha256(normalise("\n".join(pieces))).hexdigest()


def normalise(text: str) -> bytes:
    """Lowercase, every digit run → ``0``, every whitespace run → one space, stripped (UTF-8).

    ASCII text (nearly all of it) takes a byte-level path several times faster than the
    general one; both give the same bytes for the same text.
    """
    lowered = text.lower()
    if not lowered.isascii():
        return " ".join(_DIGITS.sub("0", lowered).split()).encode()
    data = lowered.encode().translate(_ASCII_TABLE)
    return _ZERO_RUNS.sub(b"0", _SPACE_RUNS.sub(b" ", data)).strip(b" ")


def _part_text(part: dict[str, Any]) -> str:
    text = part.get("text", part.get("refusal", ""))
    return text if isinstance(text, str) else ""


def _extra_text(message: Message, pieces: list[str]) -> None:
    refusal = message.get("refusal")
    if refusal:
        pieces.append(refusal)
    for call in message.get("tool_calls", ()):
        pieces.append(call["function"]["name"])
        pieces.append(call["function"]["arguments"])
