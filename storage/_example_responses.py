"""Responses API traffic as chat messages (``../shared/reference/openai-api.md`` §3.9).

* ``instructions`` → a leading ``system`` message. Only the capture's own: OpenAI does not
  carry instructions over a ``previous_response_id`` chain, so earlier turns' instructions
  were not in the model's context.
* ``input``: a string → one ``user`` message; ``message`` items keep their role
  (``input_text`` → text parts, a single text part becomes plain string content;
  ``input_image`` → an ``image_url`` part; an assistant's ``output_text`` parts are joined
  into one string, ``refusal`` parts into ``refusal``); ``function_call`` → an assistant
  ``tool_calls`` entry, merged into the assistant message just before it, so consecutive calls
  (and text followed by calls) form one message; ``function_call_output`` → a ``tool``
  message; ``reasoning`` is dropped.
* ``output`` → one assistant message the same way (text of all ``output_text`` parts joined,
  function calls as ``tool_calls``).
* Unusable (``unparseable``): built-in tool items (``web_search_call``, ``file_search_call``,
  ``computer_call``, MCP, custom tools, …) in the input or the output, since the chat form
  cannot say what they returned and an answer built on hidden results teaches the student to
  invent them; ``input_file`` parts and ``file_id``-only images; ``item_reference`` items and
  the ``conversation`` and ``prompt`` parameters, whose content is stored server-side and not
  in the capture.
* Function tools are flat in Responses and become chat tools
  ``{"type": "function", "function": {"name", "description", "parameters", "strict"}}``;
  built-in tools are left out.
"""

from __future__ import annotations

from typing import Any

from storage._example_messages import Message, Unusable, image_part, quoted, tool_call

_INPUT_ROLES = frozenset({"user", "system", "developer", "assistant"})


def responses_prompt(request: Message, history: list[tuple[Message, Message]]) -> list[Message]:
    """The conversation before the answer: ``history`` holds the (request, response) pairs of
    the earlier captures of a ``previous_response_id`` chain, oldest first."""
    messages: list[Message] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            messages.append({"role": "system", "content": instructions})
    elif instructions is not None:
        raise Unusable("unparseable", "instructions is not text")
    for turn, (earlier, response) in enumerate(history, 1):
        _check_server_side(earlier)
        _append_input(earlier.get("input"), messages, f"turn {turn}")
        answer = responses_answer(response, f"turn {turn} output")
        if len(answer) > 1:  # an earlier turn with no output adds nothing
            messages.append(answer)
    _check_server_side(request)
    _append_input(request.get("input"), messages, "input")
    return messages


def _check_server_side(request: Message) -> None:
    if request.get("conversation") is not None:
        raise Unusable("unparseable", "conversation items are stored server-side")
    if request.get("prompt") is not None:
        raise Unusable("unparseable", "a server-side prompt template is not in the capture")


def _append_input(value: object, messages: list[Message], where: str) -> None:
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
        return
    if not isinstance(value, list):
        raise Unusable("unparseable", f"{where} is neither text nor a list of items")
    for index, item in enumerate(value):
        _append_item(item, messages, f"{where} item {index}")


def _append_item(item: object, messages: list[Message], where: str) -> None:
    if not isinstance(item, dict):
        raise Unusable("unparseable", f"{where} is not an object")
    kind = item.get("type")
    if kind == "message" or (kind is None and "role" in item):
        messages.append(_input_message(item, where))
    elif kind == "function_call":
        call = tool_call(item.get("call_id"), item.get("name"), item.get("arguments"), where)
        _add_tool_call(messages, call)
    elif kind == "function_call_output":
        messages.append(_tool_result(item, where))
    elif kind != "reasoning":
        raise Unusable("unparseable", f"{where}: {quoted(kind)} items have no chat form")


def _add_tool_call(messages: list[Message], call: Message) -> None:
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "tool_calls": [call]})


def _input_message(item: Message, where: str) -> Message:
    role = item.get("role")
    if role not in _INPUT_ROLES:
        raise Unusable("unparseable", f"{where} has an unknown role {quoted(role)}")
    content = item.get("content")
    if role == "assistant":
        return _assistant(content, where)
    if isinstance(content, str):
        return {"role": role, "content": content}
    return {"role": role, "content": _input_parts(content, where)}


def _input_parts(content: object, where: str) -> str | list[Message]:
    if not isinstance(content, list):
        raise Unusable("unparseable", f"{where} content is neither text nor a list of parts")
    parts: list[Message] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part, dict):
            text = part.get("text")
            if not isinstance(text, str):
                raise Unusable("unparseable", f"{where} has a text part without text")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image" and isinstance(part, dict):
            parts.append(image_part(part.get("image_url"), part.get("detail"), where))
        else:
            raise Unusable("unparseable", f"{where} has a {quoted(kind)} part (not trainable)")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _assistant(content: object, where: str) -> Message:
    out: Message = {"role": "assistant"}
    if isinstance(content, str):
        out["content"] = content
        return out
    if not isinstance(content, list):
        raise Unusable("unparseable", f"{where} content is neither text nor a list of parts")
    texts: list[str] = []
    refusals: list[str] = []
    _collect_parts(content, texts, refusals, where)
    if texts:
        out["content"] = "".join(texts)
    if refusals:
        out["refusal"] = "".join(refusals)
    return out


def _collect_parts(content: list[Any], texts: list[str], refusals: list[str], where: str) -> None:
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        field = "text" if kind in ("output_text", "input_text", "text") else kind
        value = part.get(field) if isinstance(part, dict) and field is not None else None
        if not isinstance(value, str) or field not in ("text", "refusal"):
            raise Unusable("unparseable", f"{where} has a {quoted(kind)} part (not trainable)")
        (texts if field == "text" else refusals).append(value)


def _tool_result(item: Message, where: str) -> Message:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise Unusable("unparseable", f"{where}: a function_call_output without call_id")
    output = item.get("output")
    content = output if isinstance(output, str) else _input_parts(output, where)
    if isinstance(content, list) and any(part["type"] != "text" for part in content):
        raise Unusable("unparseable", f"{where}: a tool result with images (not trainable)")
    return {"role": "tool", "content": content, "tool_call_id": call_id}


def responses_answer(response: Message, where: str = "output") -> Message:
    """A response's ``output`` as one assistant message (possibly with no content at all)."""
    output = response.get("output")
    if not isinstance(output, list):
        raise Unusable("unparseable", f"the response has no {where} list")
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[Message] = []
    for index, item in enumerate(output):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message" and isinstance(item, dict):
            content = item.get("content")
            if not isinstance(content, list):
                raise Unusable("unparseable", f"{where} item {index} has no content list")
            _collect_parts(content, texts, refusals, f"{where} item {index}")
        elif kind == "function_call" and isinstance(item, dict):
            args = item.get("arguments")
            calls.append(tool_call(item.get("call_id"), item.get("name"), args, where))
        elif kind != "reasoning":
            raise Unusable("unparseable", f"{where}: {quoted(kind)} items have no chat form")
    answer: Message = {"role": "assistant"}
    if texts and not (calls and not any(texts)):
        answer["content"] = "".join(texts)
    if refusals:
        answer["refusal"] = "".join(refusals)
    if calls:
        answer["tool_calls"] = calls
    return answer


def responses_tools(raw: object) -> list[Message] | None:
    if not isinstance(raw, list):
        return None
    tools: list[Message] = []
    for tool in raw:
        if isinstance(tool, dict) and tool.get("type") == "function":
            if isinstance(tool.get("name"), str):
                function = {
                    key: tool[key]
                    for key in ("name", "description", "parameters", "strict")
                    if tool.get(key) is not None
                }
                tools.append({"type": "function", "function": function})
    return tools or None


def responses_format(request: Message) -> object:
    """``text.format`` in chat's ``response_format`` shape (the schema un-flattened)."""
    text = request.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {"schema": fmt.get("schema")}}
    return fmt
