"""One line's checks for ``storage.validate`` (pure; private).

Each ``check_*`` function takes a parsed line and a ``Found`` collector and records every
problem it sees as ``(key, message)``; messages name the message and key at fault, never the
example's text. Keys are OpenAI cookbook's error classes (``data_type``,
``missing_messages_list``, ``message_missing_key``, ``message_unrecognized_key``,
``unrecognized_role``, ``missing_content``, ``example_missing_assistant_message``) plus the
extensions for today's format (``../shared/reference/openai-api.md`` §6.1-6.4, §6.7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

Message = dict[str, Any]

ROLES = ("system", "user", "assistant", "tool", "function")
_ROLE_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset(
        {"role", "content", "name", "tool_calls", "function_call", "refusal", "weight"}
    ),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
_ANY_ROLE_KEYS = frozenset().union(*_ROLE_KEYS.values())
_PART_ROLES: dict[str, frozenset[str]] = {
    "text": frozenset(ROLES),
    "image_url": frozenset({"user"}),  # images cannot appear in assistant messages
    "refusal": frozenset({"assistant"}),
}
_NOT_ACCEPTED_PARTS = frozenset({"input_audio", "file"})
CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
DPO_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
_DPO_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
_DPO_OLD_KEYS = {
    "preferred_completion": "preferred_output",
    "non_preferred_completion": "non_preferred_output",
}


@dataclass
class Found:
    """What one line's checks found."""

    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, key: str, message: str) -> None:
        self.errors.append((key, message))


@dataclass
class _Conversation:
    """What the checks learn walking one conversation's messages."""

    call_ids: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    trained: int = 0  # assistant messages trained on (weight absent or 1)


def check_chat(line: object, found: Found) -> None:
    """An SFT chat line: ``{"messages", "tools"?, "parallel_tool_calls"?}``."""
    if not isinstance(line, dict):
        found.error("data_type", "the line is not a JSON object")
        return
    _unknown_keys(line, CHAT_KEYS, "the line", found)
    _check_options(line, found)
    messages = line.get("messages")
    if not isinstance(messages, list) or not messages:
        found.error("missing_messages_list", "no messages list, or an empty one")
        return
    seen = _check_messages(messages, found, weights=True)
    if "assistant" not in seen.roles:
        found.error("example_missing_assistant_message", "no assistant message")
    elif not seen.trained:
        found.error(
            "no_trained_assistant_message", "every assistant message has weight 0: nothing to train"
        )
    _warn_roles(seen, found)


def check_dpo(line: object, found: Found) -> None:
    """A preference line: ``{"input": {"messages", ...}, "preferred_output": [m],
    "non_preferred_output": [m]}``, each output exactly one assistant message."""
    if not isinstance(line, dict):
        found.error("data_type", "the line is not a JSON object")
        return
    for key in line:
        if key in _DPO_OLD_KEYS:
            found.error("unrecognized_key", f"{key!r} is the old name: use {_DPO_OLD_KEYS[key]!r}")
    _unknown_keys(
        {k: v for k, v in line.items() if k not in _DPO_OLD_KEYS}, DPO_KEYS, "the line", found
    )
    given = line.get("input")
    seen = _Conversation()
    if not isinstance(given, dict):
        found.error("missing_input", "no input object")
    else:
        _unknown_keys(given, _DPO_INPUT_KEYS, "input", found)
        _check_options(given, found)
        messages = given.get("messages")
        if not isinstance(messages, list) or not messages:
            found.error("missing_messages_list", "input has no messages list, or an empty one")
        else:
            seen = _check_messages(messages, found, weights=False)
            _warn_roles(seen, found)
    for key in ("preferred_output", "non_preferred_output"):
        _check_output(line.get(key), key, seen, found)


def _check_output(output: object, key: str, seen: _Conversation, found: Found) -> None:
    if output is None:
        found.error("missing_output", f"no {key}")
        return
    if not isinstance(output, list) or len(output) != 1:
        found.error("invalid_output", f"{key} must be a list of exactly one assistant message")
        return
    message = output[0]
    if not isinstance(message, dict) or message.get("role") != "assistant":
        found.error("invalid_output", f"{key}'s message must be an assistant message")
        return
    if "weight" in message:
        found.error("message_unrecognized_key", f"{key}'s message has 'weight' (SFT only)")
    _check_message({k: v for k, v in message.items() if k != "weight"}, key, seen, found)


def _unknown_keys(obj: Message, known: frozenset[str], where: str, found: Found) -> None:
    extra = sorted(str(key) for key in obj if key not in known)
    if extra:
        found.error("unrecognized_key", f"{where} has unknown keys {', '.join(extra)}")


def _check_options(obj: Message, found: Found) -> None:
    tools = obj.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(_is_function_tool(tool) for tool in tools)
    ):
        found.error(
            "invalid_tools", 'tools must be a list of {"type": "function", "function": {name}}'
        )
    parallel = obj.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        found.error("invalid_parallel_tool_calls", "parallel_tool_calls must be true or false")


def _is_function_tool(tool: object) -> bool:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return False
    function = tool.get("function")
    return isinstance(function, dict) and isinstance(function.get("name"), str)


def _check_messages(messages: list[Any], found: Found, *, weights: bool) -> _Conversation:
    seen = _Conversation()
    for index, message in enumerate(messages, 1):
        where = f"message {index}"
        if not isinstance(message, dict):
            found.error("data_type", f"{where} is not an object")
            continue
        if not weights and "weight" in message:
            found.error("message_unrecognized_key", f"{where} has 'weight' (SFT only)")
            message = {k: v for k, v in message.items() if k != "weight"}
        _check_message(message, where, seen, found)
    return seen


def _check_message(message: Message, where: str, seen: _Conversation, found: Found) -> None:
    role = message.get("role")
    if "role" not in message:
        found.error("message_missing_key", f"{where} has no role")
    elif role not in ROLES:
        hint = " (use system)" if role == "developer" else ""
        found.error("unrecognized_role", f"{where} has role {str(role)!r:.40}{hint}")
    else:
        seen.roles.add(role)
    allowed = _ROLE_KEYS.get(role, _ANY_ROLE_KEYS) if isinstance(role, str) else _ANY_ROLE_KEYS
    extra = sorted(str(key) for key in message if key not in allowed)
    if extra:
        found.error("message_unrecognized_key", f"{where} has unknown keys {', '.join(extra)}")
    calls = message.get("tool_calls")
    acts = bool(calls) or message.get("function_call") is not None
    answers = acts or bool(message.get("refusal"))  # content may be absent or null then
    _check_content(message, where, role, answers, found)
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            found.error("invalid_weight", f"{where}: weight is only for assistant messages")
        elif isinstance(weight, bool) or weight not in (0, 1):
            found.error("invalid_weight", f"{where}: weight must be 0 or 1")
    if role == "assistant" and message.get("weight", 1) != 0:
        seen.trained += 1
    if calls is not None:
        _check_tool_calls(calls, where, seen, found)
    if message.get("function_call") is not None:
        _check_call(message["function_call"], f"{where} function_call", found)
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            found.error("message_missing_key", f"{where} (tool) has no tool_call_id")
        elif call_id not in seen.call_ids:
            found.error(
                "unknown_tool_call_id",
                f"{where}: tool_call_id {call_id!r:.60} matches no earlier tool call",
            )


def _check_content(message: Message, where: str, role: object, answers: bool, found: Found) -> None:
    if "content" not in message:
        if not answers:
            found.error("message_missing_key", f"{where} has no content")
        return
    content = message["content"]
    if isinstance(content, str):
        if not content and not answers:
            found.error("missing_content", f"{where} has empty content")
    elif isinstance(content, list):
        if not content and not answers:
            found.error("missing_content", f"{where} has an empty content list")
        for number, part in enumerate(content, 1):
            _check_part(part, f"{where} part {number}", role, found)
    elif content is not None or not answers:
        found.error("missing_content", f"{where} content is not text or a list of parts")


def _check_part(part: object, where: str, role: object, found: Found) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(part, dict) or not isinstance(kind, str):
        found.error("invalid_content_part", f"{where} is not a typed content part")
        return
    if kind in _NOT_ACCEPTED_PARTS:
        found.error("unsupported_content_part", f"{where}: {kind} is not accepted for fine-tuning")
        return
    roles = _PART_ROLES.get(kind)
    if roles is None:
        found.error("unsupported_content_part", f"{where}: unknown part type {kind!r:.40}")
    elif role not in roles:
        found.error("unsupported_content_part", f"{where}: {kind} parts are not allowed for {role}")
    elif kind == "text" and not isinstance(part.get("text"), str):
        found.error("invalid_content_part", f"{where}: a text part needs text")
    elif kind == "refusal" and not isinstance(part.get("refusal"), str):
        found.error("invalid_content_part", f"{where}: a refusal part needs refusal text")
    elif kind == "image_url" and not _has_url(part.get("image_url")):
        found.error("invalid_content_part", f"{where}: an image_url part needs image_url.url")


def _has_url(image: object) -> bool:
    return isinstance(image, dict) and isinstance(image.get("url"), str) and bool(image["url"])


def _check_tool_calls(calls: object, where: str, seen: _Conversation, found: Found) -> None:
    if not isinstance(calls, list):
        found.error("invalid_tool_calls", f"{where}: tool_calls is not a list")
        return
    for number, call in enumerate(calls, 1):
        at = f"{where} tool call {number}"
        if not isinstance(call, dict):
            found.error("invalid_tool_calls", f"{at} is not an object")
            continue
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            found.error("invalid_tool_calls", f"{at} has no id")
        else:
            seen.call_ids.add(call_id)
        if call.get("type", "function") != "function":
            found.error("invalid_tool_calls", f"{at} is not a function call")
        _check_call(call.get("function"), at, found)


def _check_call(function: object, where: str, found: Found) -> None:
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        found.error("invalid_tool_calls", f"{where} has no function name")
        return
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        found.error("tool_arguments_not_string", f"{where}: arguments must be a JSON string")
        return
    try:
        orjson.loads(arguments)
    except orjson.JSONDecodeError:
        found.error("invalid_tool_arguments", f"{where}: arguments are not valid JSON")


def _warn_roles(seen: _Conversation, found: Found) -> None:
    if "system" not in seen.roles:
        found.warnings.append("missing_system_message")
    if "user" not in seen.roles:
        found.warnings.append("missing_user_message")
