"""Deterministic OpenAI-shaped bodies for the mock upstream (`proxy.mock`).

Every function here is pure: it takes the parsed request body and `digest` (a sha256 of the
request without its `stream` fields, see `proxy.mock`) and returns a JSON-able payload or the exact
SSE bytes of a stream, so the same request always yields the same bytes (`created` is the constant
`CREATED`) and a streamed answer says what the plain one does.

The "model" writes words from a fixed vocabulary picked by SHAKE-128 of the digest. One word is one
completion token and one streamed content chunk, so usage and chunk counts agree. Prompt tokens are
estimated as characters / 4 plus OpenAI's per-message framing (3 tokens a message, 3 to prime).
"""

from __future__ import annotations

import hashlib
import re
from itertools import zip_longest
from typing import Any, NamedTuple

import orjson

CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z: a constant, so bodies are byte-reproducible
FINGERPRINT = "fp_5t1llr00m0"
MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "o4-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
MAX_CHOICES = 128
_MAX_TOOL_CALLS = 3

_VOCAB = (
    "the", "quiet", "room", "keeps", "a", "record", "of", "every", "answer", "that", "passes",
    "through", "it", "and", "later", "teaches", "smaller", "model", "to", "speak", "with", "same",
    "care", "river", "stone", "light", "paper", "window", "garden", "signal", "bright", "steady",
    "careful", "simple", "quick", "honest", "useful", "clear", "small", "large", "north", "south",
    "morning", "evening", "letter", "number", "story", "reason", "question", "shadow", "engine",
    "bridge", "harbor", "lantern", "meadow", "copper", "silver", "amber", "cedar", "maple",
    "orchid", "thunder", "velvet", "willow",
)  # fmt: skip
_WORDS = _VOCAB * 4  # indexed by a byte
_SPACED = tuple(" " + word for word in _WORDS)
_TOKEN_SPLIT = re.compile(r"\w+|\W+")


class InvalidRequest(Exception):
    """The request body is not one OpenAI would accept; answered as a 400 error envelope."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ToolCall(NamedTuple):
    id: str
    name: str
    arguments: str

    def argument_pieces(self) -> list[str]:
        """The arguments cut at token-like boundaries, as OpenAI streams them: `{"`, `city`…"""
        return _TOKEN_SPLIT.findall(self.arguments) or [""]


class Draft(NamedTuple):
    """What the mock model says in one choice: text pieces, or tool calls."""

    pieces: list[str]
    calls: list[ToolCall]
    finish_reason: str
    refusal: bool = False  # the pieces are a refusal, not content

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def tokens(self) -> int:
        if not self.calls:
            return len(self.pieces)
        return sum(3 + len(c.argument_pieces()) for c in self.calls)


# --- shared building blocks ---------------------------------------------------------------------


def words(digest: bytes, salt: int, count: int, *, sentence: bool = True) -> list[str]:
    """`count` deterministic word pieces; a sentence starts with a capital and ends with '.'."""
    picks = hashlib.shake_128(digest + salt.to_bytes(4, "big")).digest(count)
    pieces = [_SPACED[b] for b in picks]
    if sentence:
        pieces[0] = _WORDS[picks[0]].capitalize()
        pieces[-1] += "."
    return pieces


def answer_length(digest: bytes, chunks: int | None) -> int:
    return chunks if chunks is not None else 8 + digest[0] % 25


def text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part["text"])
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0


def cached_tokens(prompt_tokens: int) -> int:
    """OpenAI caches prompts of 1024+ tokens in 128-token steps; say half of it was a cache hit."""
    return (prompt_tokens // 2) // 128 * 128 if prompt_tokens >= 1024 else 0


def reasoning_tokens(model: str, digest: bytes) -> int:
    return 64 * (1 + digest[1] % 8) if model.startswith(_REASONING_PREFIXES) else 0


def hex_id(digest: bytes, label: bytes, length: int) -> str:
    return hashlib.shake_128(digest + label).hexdigest((length + 1) // 2)[:length]


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", "model")
    return model


def positive_int(body: dict[str, Any], name: str, default: int, limit: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise InvalidRequest(f"Invalid '{name}': expected an integer from 1 to {limit}.", name)
    return value


def token_limit(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def text_draft(digest: bytes, salt: int, length: int, limit: int | None) -> Draft:
    if limit is not None and limit < length:
        return Draft(words(digest, salt, limit, sentence=False), [], "length")
    return Draft(words(digest, salt, length), [], "stop")


def tool_draft(digest: bytes, salt: int, tools: list[tuple[str, Any]]) -> Draft:
    calls = [
        ToolCall(
            "call_" + hex_id(digest, b"call%d.%d" % (salt, i), 24),
            name,
            arguments_for(parameters, digest + b"%d.%d" % (salt, i)),
        )
        for i, (name, parameters) in enumerate(tools)
    ]
    return Draft([], calls, "tool_calls")


def arguments_for(schema: Any, seed: bytes) -> str:
    """Compact JSON arguments that fit the tool's JSON-schema `properties` (first 8 of them)."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or not properties:
        return "{}"
    picks = hashlib.shake_128(seed).digest(8)
    values = {
        name: _value_for(spec, picks[i])
        for i, (name, spec) in enumerate(properties.items())
        if i < 8
    }
    return orjson.dumps(values).decode()


def _value_for(spec: Any, pick: int) -> Any:
    if not isinstance(spec, dict):
        return _VOCAB[pick & 63]
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[pick % len(enum)]
    kind = spec.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return pick
    if kind == "number":
        return pick / 4
    if kind == "boolean":
        return bool(pick & 1)
    if kind == "array":
        return [_VOCAB[pick & 63]]
    if kind == "object":
        return {}
    if kind == "null":
        return None
    return _VOCAB[pick & 63].capitalize()


def pick_tools(
    tools: list[tuple[str, Any]], choice: Any, parallel: bool, forced_name: str | None
) -> list[tuple[str, Any]]:
    """The tools the mock calls: none for `tool_choice: none`, the forced one, or the first (up to
    three in parallel when `parallel_tool_calls` is not false)."""
    if not tools or choice == "none":
        return []
    if forced_name is not None:
        return [tool for tool in tools if tool[0] == forced_name][:1]
    return tools[:_MAX_TOOL_CALLS] if parallel else tools[:1]


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def interleave(per_choice: list[list[bytes]]) -> list[bytes]:
    """Round-robin the choices' chunks, like OpenAI does for `n` > 1."""
    if len(per_choice) == 1:
        return per_choice[0]
    return [chunk for row in zip_longest(*per_choice) for chunk in row if chunk is not None]


# --- models -------------------------------------------------------------------------------------


def model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": CREATED, "owned_by": "system"}


def model_list() -> bytes:
    return orjson.dumps({"object": "list", "data": [model_object(m) for m in MODELS]})
