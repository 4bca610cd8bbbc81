"""Examples in each export format's row shape (storage.export; pure; private).

Every function takes ``Example``s (or their messages) and returns plain JSON values; the
callers serialise with orjson, so the same examples always give the same bytes.

* ``openai_chat_row``: OpenAI's SFT chat line (``../shared/reference/openai-api.md`` §6.1-6.2).
* ``openai_dpo_row``: OpenAI's preference line (§6.4).
* ``hf_row`` / ``hf_prompt_completion_row``: rows for Hugging Face ``datasets`` and TRL
  (``../shared/reference/training.md`` §b.3-b.4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from storage.examples import Example

Message = dict[str, Any]
Row = dict[str, Any]

_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


# -- OpenAI ---------------------------------------------------------------------------------------


def openai_message(message: Message) -> Message:
    """A message as OpenAI's fine-tuning formats take it: ``developer`` becomes ``system``
    (not in the SFT/DPO role union) and tool-call arguments are JSON text."""
    out = dict(message)
    if out.get("role") == "developer":
        out["role"] = "system"
    calls = out.get("tool_calls")
    if calls:
        out["tool_calls"] = [_call_with_text_arguments(call) for call in calls]
    return out


def _call_with_text_arguments(call: Message) -> Message:
    function = call.get("function")
    if not isinstance(function, dict) or isinstance(function.get("arguments"), str):
        return call
    arguments = function.get("arguments")
    text = "{}" if arguments is None else orjson.dumps(arguments).decode()
    return {**call, "function": {**function, "arguments": text}}


def openai_chat_row(example: Example) -> Row:
    """``{"messages", "tools"?, "parallel_tool_calls"?}``; the last message (the captured
    answer) has ``weight: 1`` and every earlier assistant message (history the app sent)
    ``weight: 0``."""
    last = len(example.messages) - 1
    messages = []
    for index, message in enumerate(example.messages):
        out = openai_message(message)
        if out.get("role") == "assistant":
            out["weight"] = 1 if index == last else 0
        messages.append(out)
    return _with_tools({"messages": messages}, example)


def openai_dpo_row(prompt: Example, preferred: Message, rejected: Message) -> Row:
    """``{"input": {"messages", "tools"?, "parallel_tool_calls"?}, "preferred_output": [m],
    "non_preferred_output": [m]}``: ``input`` is ``prompt``'s conversation without its answer,
    each output exactly one assistant message (OpenAI trains single-turn preference only)."""
    messages = [openai_message(message) for message in prompt.messages[:-1]]
    return {
        "input": _with_tools({"messages": messages}, prompt),
        "preferred_output": [openai_message(preferred)],
        "non_preferred_output": [openai_message(rejected)],
    }


def _with_tools(body: Row, example: Example) -> Row:
    if example.tools is not None:
        body["tools"] = example.tools
    if example.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = example.parallel_tool_calls
    return body


# -- Hugging Face ---------------------------------------------------------------------------------


def hf_message(message: Message) -> Message:
    """A message as chat templates render it: ``developer`` → ``system``, content-part lists
    of text only → one string (templates concatenate ``message.content``), tool-call
    arguments → objects (templates apply ``tojson``; text would be encoded twice)."""
    out = dict(message)
    if out.get("role") == "developer":
        out["role"] = "system"
    content = out.get("content")
    if isinstance(content, list) and all(_is_text_part(part) for part in content):
        out["content"] = "".join(part["text"] for part in content)
    calls = out.get("tool_calls")
    if calls:
        out["tool_calls"] = [_call_with_object_arguments(call) for call in calls]
    return out


def _is_text_part(part: object) -> bool:
    return (
        isinstance(part, dict)
        and part.get("type") in _TEXT_PARTS
        and isinstance(part.get("text"), str)
    )


def _call_with_object_arguments(call: Message) -> Message:
    function = call.get("function")
    if not isinstance(function, dict):
        return call
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        return call
    if not arguments.strip():
        value: object = {}
    else:
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return call  # not JSON: kept as the model wrote it
    return {**call, "function": {**function, "arguments": value}}


def hf_tools(example: Example) -> str | None:
    """The tools as one JSON string (TRL ``json.loads`` a string ``tools`` column), or None."""
    return orjson.dumps(example.tools).decode() if example.tools else None


def hf_row(example: Example) -> Row:
    """``{"messages", "tools"}``: TRL's conversational language-modeling row."""
    return {
        "messages": [hf_message(message) for message in example.messages],
        "tools": hf_tools(example),
    }


def hf_prompt_completion_row(example: Example) -> Row:
    """``{"prompt", "completion", "tools"}``: TRL's conversational prompt-completion row;
    ``completion`` is the captured answer alone, so only it is trained."""
    messages = [hf_message(message) for message in example.messages]
    return {"prompt": messages[:-1], "completion": messages[-1:], "tools": hf_tools(example)}


# The row of each format that has one row per example (``openai-dpo`` has one per pair).
ITEM_ROWS: dict[str, Callable[[Example], Row]] = {
    "openai-chat": openai_chat_row,
    "hf": hf_row,
    "hf-prompt-completion": hf_prompt_completion_row,
}
