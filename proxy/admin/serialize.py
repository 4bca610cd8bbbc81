"""Captures as JSON: the one shape the admin API, the CLI's ``--json`` and the docs share.

``capture_json(stored)`` is the summary a list returns; ``detail=True`` adds the request as
sent, the raw response and the reassembled response object (what ``GET /admin/captures/{id}``
and ``stillroom captures show`` return). Bodies that are JSON are embedded as JSON; anything
else is given as text (``request_text`` / ``response_text``), or base64 when not UTF-8.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from storage.query import Conversation, Curation, StoredCapture
from storage.text import search_text

PREVIEW_CHARS = 160


def capture_json(stored: StoredCapture, *, detail: bool = False) -> dict[str, Any]:
    r = stored.record
    usage = r.usage
    out: dict[str, Any] = {
        "id": r.id,
        "object": "capture",
        "created_at": r.created_at,
        "endpoint": r.endpoint,
        "method": r.method,
        "path": r.path,
        "model": r.returned_model if r.returned_model is not None else r.requested_model,
        "requested_model": r.requested_model,
        "returned_model": r.returned_model,
        "stream": r.stream,
        "status": r.status,
        "outcome": r.outcome,
        "error": r.error,
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
        },
        "tags": dict(r.tags),
        "response_id": r.response_id,
        "previous_response_id": r.previous_response_id,
        "upstream_request_id": r.upstream_request_id,
        "retry_count": r.retry_count,
        "key_fingerprint": r.key_fingerprint,
        "has_tool_calls": r.has_tool_calls,
        "request_bytes": len(r.request_body),
        "response_bytes": len(r.response_body),
        "response_truncated": r.response_truncated,
        "curation": curation_json(stored.curation),
        "preview": preview(stored),
    }
    if detail:
        out["request"] = _body_json(r.request_body, "request")
        out["response_content_type"] = r.response_content_type
        out["response_body"] = _body_json(r.response_body, "response")
        out["response"] = r.response
    return out


def preview(stored: StoredCapture) -> str:
    """What a list row shows: the start of this call's new prompt text, else of the answer."""
    r = stored.record
    prompt, answer = search_text(r.endpoint, r.request_body, r.response)
    text = " ".join((prompt or answer).split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def curation_json(curation: Curation) -> dict[str, Any]:
    feedback = None
    if curation.feedback_score is not None or curation.feedback_note is not None:
        feedback = {"score": curation.feedback_score, "note": curation.feedback_note}
    return {
        "feedback": feedback,
        "excluded": curation.excluded,
        "corrected_response": curation.corrected_response,
        "updated_at": curation.updated_at,
    }


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    """A Responses API chain: ids oldest first, and whether its start was captured."""
    return {
        "complete": conversation.complete,
        "missing_response_id": conversation.missing_response_id,
        "capture_ids": [c.record.id for c in conversation.captures],
        "response_ids": [c.record.response_id for c in conversation.captures],
    }


def _body_json(body: bytes, name: str) -> dict[str, Any]:
    """``{"json": …}`` for a JSON body, ``{"text": …}`` for other UTF-8, else base64."""
    if body[:1] in (b"{", b"["):
        try:
            return {"json": orjson.loads(body)}
        except orjson.JSONDecodeError:
            pass
    try:
        return {"text": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(body).decode("ascii")}
