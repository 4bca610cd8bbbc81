"""Captures in the shapes of OpenAI's Stored Completions API (pure functions, no I/O).

``completion_object`` is a stored ``chat.completion`` as ``GET /v1/chat/completions/{id}``
returns it: the reassembled response (a streamed capture reassembles to the same shape) with
the completion's own ``id``, the capture's tags as ``metadata``, the upstream ``request_id``, and
the request-side fields OpenAI echoes (``tools``, ``temperature``, …) taken from the captured
request body, null where the request did not set them.

``input_messages`` are the request's ``messages`` as ``ChatCompletionStoreMessage`` items, with
ids ``<completion_id>-<position>``.
"""

from __future__ import annotations

from typing import Any

import orjson

from storage.models import CaptureRecord
from storage.query import StoredCapture

# Request fields OpenAI returns on a stored completion, null when the request left them out.
ECHOED_REQUEST_FIELDS: tuple[str, ...] = (
    "tools",
    "tool_choice",
    "response_format",
    "seed",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
)
# Message fields kept as sent besides role/content/name (assistant turns and tool results).
_MESSAGE_EXTRAS: tuple[str, ...] = (
    "tool_calls",
    "tool_call_id",
    "function_call",
    "refusal",
    "audio",
)


def is_stored_completion(record: CaptureRecord) -> bool:
    """A completed chat completion with a response object: what the API can show."""
    return (
        record.endpoint == "chat/completions"
        and record.outcome == "completed"
        and isinstance(record.response, dict)
        and record.response_id is not None
    )


def completion_id(record: CaptureRecord) -> str:
    """The id the API shows: the completion's own ``chatcmpl-…`` id, else the capture id."""
    return record.response_id or record.id


def request_object(record: CaptureRecord) -> dict[str, Any]:
    """The captured request body as a JSON object; ``{}`` when it is not one."""
    body = record.request_body
    if body[:1] != b"{":
        body = body.lstrip()
        if body[:1] != b"{":
            return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def completion_object(stored: StoredCapture) -> dict[str, Any]:
    record = stored.record
    response = record.response if isinstance(record.response, dict) else {}
    request = request_object(record)
    out: dict[str, Any] = dict(response)
    out["id"] = completion_id(record)
    out["object"] = "chat.completion"
    if not isinstance(out.get("created"), int):
        out["created"] = int(record.created_at)
    if not isinstance(out.get("model"), str):
        out["model"] = record.returned_model or record.requested_model or ""
    if not isinstance(out.get("choices"), list):
        out["choices"] = []
    out["request_id"] = record.upstream_request_id
    out["metadata"] = dict(record.tags)
    for name in ECHOED_REQUEST_FIELDS:
        out[name] = request.get(name)
    out["input_user"] = request.get("user")
    return out


def input_messages(record: CaptureRecord, completion: str) -> list[dict[str, Any]]:
    """The request's input messages, oldest first, ids ``<completion>-<position>``."""
    messages = request_object(record).get("messages")
    if not isinstance(messages, list):
        return []
    return [_message_item(f"{completion}-{i}", m) for i, m in enumerate(messages)]


def _message_item(message_id: str, message: object) -> dict[str, Any]:
    m: dict[str, Any] = message if isinstance(message, dict) else {}
    content = m.get("content")
    parts: list[Any] | None = None
    if isinstance(content, list):
        parts = content
        texts = [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        content = "".join(texts) if texts else None
    elif content is not None and not isinstance(content, str):
        content = None
    item: dict[str, Any] = {
        "id": message_id,
        "role": m.get("role"),
        "content": content,
        "name": m.get("name"),
        "content_parts": parts,
    }
    for name in _MESSAGE_EXTRAS:
        if name in m:
            item[name] = m[name]
    return item
