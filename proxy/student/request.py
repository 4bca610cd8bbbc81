"""A chat completions request body, checked and turned into what a chat template expects.

``parse_chat_request(body)`` accepts what OpenAI's API accepts for text chats and refuses, with
``InvalidRequest`` (400, OpenAI's envelope, ``param`` naming the field), what a student cannot
do: non-text content parts, ``n`` other than 1, values of the wrong type or out of range.
Fields it does not know (``user``, ``metadata``, ``logprobs``…) are ignored, and so is
``model``: a router sends the client's own model name, and the student answers as itself.

The messages come out ready for ``apply_chat_template``: ``developer`` becomes ``system``,
content part lists become one string, and an assistant's tool-call ``arguments`` (a JSON string
on the wire) become the object that chat templates write back with ``tojson``.
``tool_choice: "none"`` drops the tools; a named function keeps only that one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from proxy.errors import InvalidRequest
from proxy.types import JSONObject

_ROLES = {"system", "developer", "user", "assistant", "tool"}
_MAX_STOPS = 4  # OpenAI's limit


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: list[JSONObject]
    tools: list[JSONObject] | None  # None: no tools (or tool_choice "none")
    max_tokens: int | None  # max_completion_tokens, else max_tokens
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage


def parse_chat_request(body: bytes) -> ChatRequest:
    """The checked request; raises ``InvalidRequest`` naming the first bad field."""
    try:
        value: Any = json.loads(body)
    except ValueError:
        raise InvalidRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = value.get("model")
    if model is not None and not isinstance(model, str):
        raise _wrong_type("model", "a string")
    n = _integer(value, "n", minimum=1)
    if n not in (None, 1):
        raise InvalidRequest("The student answers one choice per request: n must be 1.", param="n")
    raw_messages = value.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    messages = [_message(i, m) for i, m in enumerate(raw_messages)]
    stream = value.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong_type("stream", "a boolean")
    options = value.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _wrong_type("stream_options", "an object")
    include_usage = (options or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _wrong_type("stream_options.include_usage", "a boolean")
    max_tokens = _integer(value, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = _integer(value, "max_tokens", minimum=1)
    seed = _integer(value, "seed")
    return ChatRequest(
        messages=messages,
        tools=_tools(value.get("tools"), value.get("tool_choice")),
        max_tokens=max_tokens,
        temperature=_number(value, "temperature", 0.0, 2.0),
        top_p=_number(value, "top_p", 0.0, 1.0),
        seed=seed,
        stop=_stop(value.get("stop")),
        stream=bool(stream),
        include_usage=bool(stream) and include_usage,
    )


def _wrong_type(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}.", param=param)


def _integer(value: JSONObject, key: str, *, minimum: int | None = None) -> int | None:
    found = value.get(key)
    if found is None:
        return None
    if isinstance(found, bool) or not isinstance(found, int):
        raise _wrong_type(key, "an integer")
    if minimum is not None and found < minimum:
        raise InvalidRequest(f"'{key}' must be at least {minimum}.", param=key)
    return found


def _number(value: JSONObject, key: str, low: float, high: float) -> float | None:
    found = value.get(key)
    if found is None:
        return None
    if isinstance(found, bool) or not isinstance(found, int | float) or not math.isfinite(found):
        raise _wrong_type(key, "a number")
    if not low <= found <= high:
        raise InvalidRequest(f"'{key}' must be between {low:g} and {high:g}.", param=key)
    return float(found)


def _stop(found: Any) -> tuple[str, ...]:
    if found is None:
        return ()
    stops = [found] if isinstance(found, str) else found
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _wrong_type("stop", "a string or an array of strings")
    if len(stops) > _MAX_STOPS:
        raise InvalidRequest(f"'stop' takes at most {_MAX_STOPS} sequences.", param="stop")
    return tuple(s for s in stops if s)


def _message(index: int, raw: Any) -> JSONObject:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise _wrong_type(where, "an object")
    role = raw.get("role")
    if role not in _ROLES:
        raise InvalidRequest(
            f"Invalid value for '{where}.role': expected one of {', '.join(sorted(_ROLES))}.",
            param=f"{where}.role",
        )
    message: JSONObject = {"role": "system" if role == "developer" else role}
    content = raw.get("content")
    if role == "assistant" and content is None:
        message["content"] = ""
    else:
        message["content"] = _text(content, f"{where}.content")
    if role == "assistant" and raw.get("tool_calls"):
        message["tool_calls"] = _tool_calls(raw["tool_calls"], f"{where}.tool_calls")
    if role == "tool":
        tool_call_id = raw.get("tool_call_id")
        if tool_call_id is not None and not isinstance(tool_call_id, str):
            raise _wrong_type(f"{where}.tool_call_id", "a string")
        message["tool_call_id"] = tool_call_id
    name = raw.get("name")
    if isinstance(name, str):
        message["name"] = name
    return message


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _wrong_type(where, "a string or an array of content parts")
    texts: list[str] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"'{where}[{i}]': the student reads text parts only (got {kind or 'no type'}).",
                param=f"{where}[{i}]",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _tool_calls(raw: Any, where: str) -> list[JSONObject]:
    if not isinstance(raw, list):
        raise _wrong_type(where, "an array")
    calls: list[JSONObject] = []
    for i, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _wrong_type(f"{where}[{i}].function", "an object with a name")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass  # not JSON: the template writes the string as it came
        entry: JSONObject = {
            "type": "function",
            "function": {"name": function["name"], "arguments": arguments},
        }
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        calls.append(entry)
    return calls


def _tools(raw: Any, choice: Any) -> list[JSONObject] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _wrong_type("tools", "an array")
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _wrong_type(f"tools[{i}]", "a function tool")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _wrong_type(f"tools[{i}]", "a function tool")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise _wrong_type(f"tools[{i}].function.name", "a string")
    if choice is None or choice in ("auto", "required"):
        return raw or None
    if choice == "none":
        return None
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    chosen = [t for t in raw if t["function"]["name"] == name]
    if not chosen:
        raise InvalidRequest(
            "'tool_choice' must be none, auto, required or a function named in 'tools'.",
            param="tool_choice",
        )
    return chosen
