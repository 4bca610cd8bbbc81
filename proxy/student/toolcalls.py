"""Hermes-style tool calls in a student's text, read back into OpenAI's ``tool_calls`` shape.

A student trained on Stillroom's ChatML template (``proxy.training.chatml``), or a Qwen2.5
model, answers a tool call as text::

    Let me check.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>

``split_tool_calls`` turns that into ``("Let me check.", [{"id": "call_…", "type":
"function", "function": {"name": "get_weather", "arguments": "{\\"city\\":\\"Oslo\\"}"}}])``,
the message OpenAI's API would have sent, so a client cannot tell the student from the teacher.
The rules, the same as vLLM's ``hermes`` parser where they overlap:

* the content is the text before the first ``<tool_call>`` (trailing whitespace dropped;
  ``None`` when nothing is left); text between or after the calls is not content;
* a last ``<tool_call>`` without its ``</tool_call>`` still counts when what follows it is
  one complete JSON object (the model stopped at its end-of-turn token instead);
* every block must hold a JSON object with a string ``name`` and ``arguments`` (or
  ``parameters``) that is an object or a string; if any block does not, *nothing* is a tool
  call and the whole text is the content, unchanged, so no answer is lost to a bad parse;
* object arguments are sent as compact JSON; string arguments are sent as they were written.

``ToolCallGate`` does the same for a stream: it lets text through until a ``<tool_call>`` may
have begun, holds the rest, and at the end gives the held text or the calls. Everything here is
pure (no torch), so it is tested with plain strings.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal, TypedDict

from proxy.training.chatml import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


class FunctionCall(TypedDict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall


def new_call_id() -> str:
    """``call_`` and 24 hex digits, the shape of OpenAI's tool-call ids."""
    return "call_" + secrets.token_hex(12)


def split_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, tool calls) of a generated text; ``(text, [])`` when it has no valid call."""
    first = text.find(TOOL_CALL_OPEN)
    if first < 0:
        return text, []
    calls: list[ToolCall] = []
    at = first
    while at >= 0:
        start = at + len(TOOL_CALL_OPEN)
        end = text.find(TOOL_CALL_CLOSE, start)
        block = text[start:] if end < 0 else text[start:end]
        call = _parse_block(block)
        if call is None:
            return text, []
        calls.append(call)
        if end < 0:
            break
        at = text.find(TOOL_CALL_OPEN, end + len(TOOL_CALL_CLOSE))
    content = text[:first].rstrip()
    return content or None, calls


def _parse_block(block: str) -> ToolCall | None:
    try:
        value: Any = json.loads(block)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(name, str) or not name:
        return None
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    elif not isinstance(arguments, str):
        return None
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def held_suffix_length(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ToolCallGate:
    """Streams text through while holding back anything that may belong to a tool call.

    ``feed(piece)`` returns the text that is safe to send now: everything before a
    ``<tool_call>`` (or before an end that could still become one), less trailing whitespace,
    which is sent once more text follows it. ``finish()`` returns what is left to send and the
    calls; what was sent plus what is left always equals ``split_tool_calls(text)``'s content.
    """

    def __init__(self) -> None:
        self._text = ""
        self._sent = 0

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return self._text

    def feed(self, piece: str) -> str:
        self._text += piece
        text = self._text
        first = text.find(TOOL_CALL_OPEN)
        limit = first if first >= 0 else len(text) - held_suffix_length(text, TOOL_CALL_OPEN)
        limit = max(len(text[:limit].rstrip()), self._sent)
        out, self._sent = text[self._sent : limit], limit
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        content, calls = split_tool_calls(self._text)
        rest = (content or "")[self._sent :] if calls else self._text[self._sent :]
        self._sent = len(self._text)
        return rest, calls
