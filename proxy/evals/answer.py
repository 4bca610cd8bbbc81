"""``Answer``: what a grader reads from one chat completion message, the teacher's or the
student's: its text, its tool calls and its refusal.

    Answer.from_message(response["choices"][0]["message"])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # the JSON text as the model sent it


@dataclass(frozen=True, slots=True)
class Answer:
    """What a grader reads from one chat completion message (the teacher's or the student's)."""

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Answer:
        """From an assistant message dict (``choices[0].message``), tolerant of the missing or
        malformed fields that other upstreams' answers may have. The text of content parts is
        joined, a legacy ``function_call`` is one tool call, and a custom tool call's
        ``input`` is its arguments."""
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                part["text"]
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        calls: list[ToolCall] = []
        raw_calls = message.get("tool_calls")
        for call in raw_calls if isinstance(raw_calls, list) else ():
            if isinstance(call, dict):
                calls.append(_tool_call(call.get("function") or call.get("custom")))
        if not calls and isinstance(message.get("function_call"), dict):
            calls.append(_tool_call(message["function_call"]))
        refusal = message.get("refusal")
        return cls(
            content=content if isinstance(content, str) else None,
            tool_calls=tuple(calls),
            refusal=refusal if isinstance(refusal, str) else None,
        )

    @property
    def output_text(self) -> str:
        """OpenAI's ``sample.output_text``: the content, else the refusal, else ``""``."""
        return self.content or self.refusal or ""


def _tool_call(function: object) -> ToolCall:
    if not isinstance(function, dict):
        return ToolCall(name="", arguments="")
    name = function.get("name")
    arguments = function.get("arguments", function.get("input"))
    return ToolCall(
        name=name if isinstance(name, str) else "",
        arguments=arguments if isinstance(arguments, str) else "",
    )
