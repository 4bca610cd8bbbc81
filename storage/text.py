"""The text of a capture: what the full-text index holds and what a list row previews.

``search_text(endpoint, request_body, response)`` returns ``(prompt, answer)``:

* prompt — what is new in this call: the chat messages after the last assistant message (the
  user's turn, tool results), the ``input`` items (Responses API) or the ``prompt`` (legacy
  completions). Left out on purpose: system and developer messages and ``instructions`` (the
  same long prompt repeats in nearly every capture; filter by tag or model to find a prompt
  version) and earlier turns of a conversation (each was new, and indexed, in the call that
  first sent it). Indexing repeated text would grow the index with the square of a
  conversation's length for no search value.
* answer — the response's text: message content, refusals, tool-call names and arguments,
  Responses API output text, completion text.

Pure and deterministic: a contentless FTS5 index can only forget a row when it is given the same
text again, so deletes recompute it from the stored record. Changing what is extracted means a
migration that rebuilds the index.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_FIELD_CHARS = 32 * 1024  # per column and capture: bounds the indexing work of huge prompts

_SKIPPED_ROLES = frozenset({"system", "developer"})


def search_text(
    endpoint: str, request_body: bytes, response: dict[str, Any] | None
) -> tuple[str, str]:
    try:
        request = orjson.loads(request_body) if request_body[:1] == b"{" else None
    except orjson.JSONDecodeError:
        request = None
    prompt: list[str] = []
    answer: list[str] = []
    if isinstance(request, dict):
        if endpoint == "chat/completions":
            _messages(request.get("messages"), prompt)
        elif endpoint == "responses":
            _responses_input(request.get("input"), prompt)
        elif endpoint == "completions":
            _strings(request.get("prompt"), prompt)
    if isinstance(response, dict):
        if endpoint == "chat/completions":
            for choice in _list(response.get("choices")):
                if isinstance(choice, dict):
                    _message(choice.get("message"), answer)
        elif endpoint == "responses":
            _responses_output(response.get("output"), answer)
        elif endpoint == "completions":
            for choice in _list(response.get("choices")):
                if isinstance(choice, dict):
                    _strings(choice.get("text"), answer)
    return _join(prompt), _join(answer)


def _join(parts: list[str]) -> str:
    text = "\n".join(part for part in parts if part)
    return text[:MAX_FIELD_CHARS]


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: object, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        out.extend(item for item in value if isinstance(item, str))


def _content(content: object, out: list[str]) -> None:
    """A message's content: a string or a list of parts (text / input_text / output_text)."""
    if isinstance(content, str):
        out.append(content)
        return
    for part in _list(content):
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                out.append(text)
            refusal = part.get("refusal")
            if isinstance(refusal, str):
                out.append(refusal)


def _message(message: object, out: list[str]) -> None:
    if not isinstance(message, dict):
        return
    _content(message.get("content"), out)
    refusal = message.get("refusal")
    if isinstance(refusal, str):
        out.append(refusal)
    for call in _list(message.get("tool_calls")):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            _strings(function.get("name"), out)
            _strings(function.get("arguments"), out)


def _messages(messages: object, out: list[str]) -> None:
    items = _list(messages)
    start = 0
    for at in range(len(items) - 1, -1, -1):
        item = items[at]
        if isinstance(item, dict) and item.get("role") == "assistant":
            start = at + 1
            break
    for message in items[start:]:
        if isinstance(message, dict) and message.get("role") not in _SKIPPED_ROLES:
            _message(message, out)


def _responses_input(value: object, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
        return
    for item in _list(value):
        if not isinstance(item, dict) or item.get("role") in _SKIPPED_ROLES:
            continue
        _content(item.get("content"), out)
        _strings(item.get("output"), out)  # function_call_output
        _strings(item.get("arguments"), out)  # function_call


def _responses_output(value: object, out: list[str]) -> None:
    for item in _list(value):
        if not isinstance(item, dict):
            continue
        _content(item.get("content"), out)
        _strings(item.get("name"), out)
        _strings(item.get("arguments"), out)
