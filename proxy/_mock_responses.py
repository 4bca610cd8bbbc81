"""Responses API bodies for the mock upstream: `POST /v1/responses`, JSON and named-event SSE.

A stream runs `response.created`, `response.in_progress`, then per output item
`output_item.added` → (`content_part.added`, `output_text.delta`…, `output_text.done`,
`content_part.done` | `function_call_arguments.delta`…, `function_call_arguments.done`) →
`output_item.done`, and ends with `response.completed` (or `response.incomplete` when
`max_output_tokens` cut the answer). Every event carries the next `sequence_number`; there is no
`[DONE]`.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy._mock_payloads import (
    CREATED,
    Draft,
    InvalidRequest,
    answer_length,
    cached_tokens,
    hex_id,
    model_of,
    pick_tools,
    reasoning_tokens,
    text_chars,
    text_draft,
    token_limit,
    tool_draft,
)


def _tools(body: dict[str, Any]) -> list[tuple[str, Any]]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    return [
        (tool["name"], tool.get("parameters"))
        for tool in tools
        if isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(tool.get("name"), str)
    ]


def _input_items(body: dict[str, Any]) -> list[Any]:
    items = body.get("input")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if isinstance(items, list) and items:
        return items
    raise InvalidRequest("'input' must be a string or a non-empty array of items.", "input")


def _draft(body: dict[str, Any], digest: bytes, chunks: int | None) -> Draft:
    items = _input_items(body)
    last = items[-1]
    answered = isinstance(last, dict) and last.get("type") == "function_call_output"
    choice = body.get("tool_choice")
    forced = choice.get("name") if isinstance(choice, dict) else None
    parallel = body.get("parallel_tool_calls") is not False
    calls = pick_tools([] if answered else _tools(body), choice, parallel, forced)
    if calls:
        return tool_draft(digest, 0, calls)
    limit = token_limit(body, "max_output_tokens")
    return text_draft(digest, 0, answer_length(digest, chunks), limit)


def _usage(body: dict[str, Any], model: str, digest: bytes, draft: Draft) -> dict[str, Any]:
    chars = text_chars(body.get("instructions"))
    for item in _input_items(body):
        if isinstance(item, dict):
            chars += text_chars(item.get("content")) + text_chars(item.get("output"))
    prompt = 3 + chars // 4 + 3 * len(_input_items(body))
    reasoning = reasoning_tokens(model, digest)
    output = draft.tokens + reasoning
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached_tokens(prompt)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }


def _output(digest: bytes, draft: Draft, status: str) -> list[dict[str, Any]]:
    if draft.calls:
        return [
            {
                "id": "fc_" + hex_id(digest, b"fc%d" % i, 48),
                "type": "function_call",
                "status": "completed",
                "arguments": call.arguments,
                "call_id": call.id,
                "name": call.name,
            }
            for i, call in enumerate(draft.calls)
        ]
    part = {"type": "output_text", "text": draft.text, "annotations": [], "logprobs": []}
    message_id = "msg_" + hex_id(digest, b"msg", 48)
    return [
        {
            "id": message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part],
        }
    ]


def _response(
    body: dict[str, Any], digest: bytes, chunks: int | None
) -> tuple[dict[str, Any], Draft]:
    model = model_of(body)
    draft = _draft(body, digest, chunks)
    incomplete = draft.finish_reason == "length"
    status = "incomplete" if incomplete else "completed"
    response = {
        "id": "resp_" + hex_id(digest, b"resp", 48),
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "completed_at": None if incomplete else CREATED + 1,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": _output(digest, draft, status),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": _usage(body, model, digest, draft),
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
    return response, draft


def response_object(body: dict[str, Any], digest: bytes, chunks: int | None) -> bytes:
    return orjson.dumps(_response(body, digest, chunks)[0])


class _Events:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def add(self, kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(self.out), **fields}
        self.out.append(b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(payload)))


def response_events(body: dict[str, Any], digest: bytes, chunks: int | None) -> list[bytes]:
    final, draft = _response(body, digest, chunks)
    snapshot = final | {"status": "in_progress", "output": [], "usage": None}
    snapshot |= {"completed_at": None, "incomplete_details": None}
    events = _Events()
    events.add("response.created", response=snapshot)
    events.add("response.in_progress", response=snapshot)
    for index, item in enumerate(final["output"]):
        item_id = item["id"]
        if item["type"] == "function_call":
            events.add(
                "response.output_item.added",
                output_index=index,
                item=item | {"status": "in_progress", "arguments": ""},
            )
            for piece in draft.calls[index].argument_pieces():
                events.add(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=index,
                    delta=piece,
                )
            events.add(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=item["arguments"],
                name=item["name"],
            )
        else:
            where = {"item_id": item_id, "output_index": index, "content_index": 0}
            part = item["content"][0]
            events.add(
                "response.output_item.added",
                output_index=index,
                item=item | {"status": "in_progress", "content": []},
            )
            events.add("response.content_part.added", **where, part=part | {"text": ""})
            for piece in draft.pieces:
                events.add("response.output_text.delta", **where, delta=piece, logprobs=[])
            events.add("response.output_text.done", **where, text=part["text"], logprobs=[])
            events.add("response.content_part.done", **where, part=part)
        events.add("response.output_item.done", output_index=index, item=item)
    events.add(f"response.{final['status']}", response=final)
    return events.out
