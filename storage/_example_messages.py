"""Chat messages in their training form: the cleaning shared by every kind of capture.

A message keeps what training needs and nothing else, with its keys in one order:
``role``, ``content`` (a string, or a list of ``text`` / ``image_url`` / ``refusal`` parts),
``name`` (a non-empty string), ``refusal`` (a non-empty string), ``tool_calls`` (each exactly
``{"id", "type": "function", "function": {"name", "arguments"}}``) and ``tool_call_id``.
Dropped: ``null`` values, ``annotations``, ``audio``, ``logprobs``, ``prompt_cache_breakpoint``
and any field unknown to the training format.

Things with no training form make the capture unusable (``Unusable``, reason ``unparseable``,
never guessed around): audio and file parts, custom tool calls, and legacy function calling
(``functions`` / ``function_call`` / role ``function``).
"""

from __future__ import annotations

from typing import Any

import orjson

Message = dict[str, Any]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_PART_TYPES = frozenset({"text", "image_url", "refusal"})
MAX_NAME = 64  # of a tool or part type quoted in a rejection detail


class Unusable(Exception):
    """The capture cannot become an example: ``reason`` (one of REASONS) and a short detail
    (never prompt or answer text)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def quoted(value: object) -> str:
    """A model- or app-given name, short and safe for a detail line."""
    text = value if isinstance(value, str) else type(value).__name__
    return repr(text[:MAX_NAME])


def clean_message(raw: object, where: str) -> Message:
    """A request message (chat completions) in training form; ``where`` names it in details."""
    if not isinstance(raw, dict):
        raise Unusable("unparseable", f"{where} is not an object")
    role = raw.get("role")
    if role not in ROLES:
        if role == "function":
            raise Unusable("unparseable", f"{where}: legacy function messages are not supported")
        raise Unusable("unparseable", f"{where} has an unknown role {quoted(role)}")
    content = raw.get("content")
    out: Message = {"role": role}
    if type(content) is str:
        out["content"] = content
    elif content is not None:
        out["content"] = clean_content(content, where)
    if len(raw) > 2 or role == "tool" or "content" not in raw:  # the rarer fields
        _clean_extras(raw, out, where)
    return out


def _clean_extras(raw: Message, out: Message, where: str) -> None:
    name = raw.get("name")
    if isinstance(name, str) and name:
        out["name"] = name
    refusal = raw.get("refusal")
    if isinstance(refusal, str) and refusal:
        out["refusal"] = refusal
    calls = raw.get("tool_calls")
    if calls:
        out["tool_calls"] = clean_tool_calls(calls, where)
    if raw.get("function_call") is not None:
        raise Unusable("unparseable", f"{where}: legacy function_call is not supported")
    if out["role"] == "tool":
        call_id = raw.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise Unusable("unparseable", f"{where}: a tool message without tool_call_id")
        out["tool_call_id"] = call_id


def clean_content(content: object, where: str) -> str | list[Message]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Unusable("unparseable", f"{where} content is neither text nor a list of parts")
    return [_clean_part(part, where) for part in content]


def _clean_part(part: object, where: str) -> Message:
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(part, dict) or kind not in _PART_TYPES:
        raise Unusable("unparseable", f"{where} has a {quoted(kind)} part (not trainable)")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise Unusable("unparseable", f"{where} has a text part without text")
        return {"type": "text", "text": text}
    if kind == "refusal":
        refusal = part.get("refusal")
        if not isinstance(refusal, str):
            raise Unusable("unparseable", f"{where} has a refusal part without text")
        return {"type": "refusal", "refusal": refusal}
    return image_part(part.get("image_url"), None, where)


def image_part(image: object, detail: object, where: str) -> Message:
    """``{"type": "image_url", "image_url": {"url", "detail"?}}`` from a URL or an image_url
    object."""
    if isinstance(image, dict):
        detail = image.get("detail")
        image = image.get("url")
    if not isinstance(image, str) or not image:
        raise Unusable("unparseable", f"{where} has an image without a URL")
    out: Message = {"url": image}
    if isinstance(detail, str):
        out["detail"] = detail
    return {"type": "image_url", "image_url": out}


def clean_tool_calls(calls: object, where: str) -> list[Message]:
    if not isinstance(calls, list):
        raise Unusable("unparseable", f"{where} tool_calls is not a list")
    return [_clean_tool_call(call, where) for call in calls]


def _clean_tool_call(call: object, where: str) -> Message:
    if not isinstance(call, dict):
        raise Unusable("unparseable", f"{where} has a tool call that is not an object")
    kind = call.get("type", "function")
    function = call.get("function")
    if kind != "function" or not isinstance(function, dict):
        raise Unusable("unparseable", f"{where} has a {quoted(kind)} tool call (not trainable)")
    return tool_call(call.get("id"), function.get("name"), function.get("arguments"), where)


def tool_call(call_id: object, name: object, arguments: object, where: str) -> Message:
    """One tool call in training form. Arguments given as an object (a common mistake in
    hand-written corrections) become their compact JSON text; text is kept exactly."""
    if not isinstance(name, str) or not name:
        raise Unusable("unparseable", f"{where} has a tool call without a name")
    if isinstance(arguments, dict):
        arguments = orjson.dumps(arguments).decode()
    elif arguments is None:
        arguments = ""
    elif not isinstance(arguments, str):
        raise Unusable("unparseable", f"{where}: tool call {quoted(name)} arguments are not text")
    out: Message = {}
    if isinstance(call_id, str) and call_id:
        out["id"] = call_id
    out["type"] = "function"
    out["function"] = {"name": name, "arguments": arguments}
    return out


def clean_answer(raw: object, where: str) -> Message:
    """An assistant message (a chat answer or a correction) in training form.

    Empty content next to tool calls is dropped, so streamed and plain captures of one answer
    give the same message.
    """
    if not isinstance(raw, dict):
        raise Unusable("unparseable", f"{where} is not an object")
    role = raw.get("role", "assistant")
    if role not in ("assistant", None):
        raise Unusable("unparseable", f"{where} has role {quoted(role)}, not assistant")
    out: Message = {"role": "assistant"}
    content = raw.get("content")
    calls = raw.get("tool_calls")
    if content is not None and not (calls and content in ("", [])):
        out["content"] = clean_content(content, where)
    refusal = raw.get("refusal")
    if isinstance(refusal, str) and refusal:
        out["refusal"] = refusal
    if calls:
        out["tool_calls"] = clean_tool_calls(calls, where)
    if raw.get("function_call") is not None:
        raise Unusable("unparseable", f"{where}: legacy function_call is not supported")
    return out


def chat_tools(raw: object) -> list[Message] | None:
    """Function tools as given (``null`` fields dropped); custom and built-in tools have no
    training form and are left out. None when no function tool remains."""
    if not isinstance(raw, list):
        return None
    tools: list[Message] = []
    for tool in raw:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            cleaned = {key: value for key, value in function.items() if value is not None}
            tools.append({"type": "function", "function": cleaned})
    return tools or None


def answer_text(message: Message) -> str | None:
    """The text of an answer's content (text parts joined); None when it has none."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if part.get("type") == "text")
    return None


# -- chat completions: the request's prompt and the response's answer ------------------------------


def chat_prompt(request: Message) -> tuple[list[Message], list[Message] | None, object]:
    """(messages, function tools, ``response_format``) of a chat completions request."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Unusable("unparseable", "the request has no messages")
    if request.get("functions") is not None:
        raise Unusable("unparseable", "legacy functions are not supported")
    prompt = [clean_message(message, f"message {i}") for i, message in enumerate(messages)]
    return prompt, chat_tools(request.get("tools")), request.get("response_format")


def first_choice(choices: object) -> Message | None:
    """Choice 0: the one with index 0, else the first listed."""
    if not isinstance(choices, list) or not choices:
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index") == 0:
            return choice
    first = choices[0]
    return first if isinstance(first, dict) else None


def chat_answer(response: Message, where: str = "the response") -> tuple[Message, object]:
    """(choice 0's message, its ``finish_reason``); no choices at all is an empty answer."""
    choices = response.get("choices")
    if not isinstance(choices, list):
        raise Unusable("unparseable", f"{where} has no choices list")
    choice = first_choice(choices)
    if choice is None:
        if choices:
            raise Unusable("unparseable", f"{where}'s choice 0 is not an object")
        return {"role": "assistant"}, None
    answer = clean_answer(choice.get("message"), f"{where}'s choice 0 message")
    return answer, choice.get("finish_reason")
