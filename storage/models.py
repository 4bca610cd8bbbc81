"""The capture record: one forwarded exchange, as the proxy hands it to storage.

Records are immutable. The proxy builds one per exchange (after redaction: no credentials ever
reach a record) and the store keeps it raw plus derived: the request and response bytes exactly
as they crossed the wire, the reassembled response object, and the extracted columns used by
filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

Outcome = Literal[
    "completed", "upstream_error", "upstream_timeout", "client_disconnected", "interrupted"
]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


class ParsedBody(dict[str, Any]):
    """A response object that is ``orjson.loads(record.response_body)`` itself, unchanged.

    The proxy builds this for a non-streamed JSON answer. The encoder then knows without
    re-parsing the body that the object re-serialises to what the body re-serialises to, and
    that it holds no value orjson cannot write exactly (orjson never parses NaN, infinities or
    integers over 64 bits), so it stores ``JSON_FROM_BODY`` by the same rule as for a plain
    dict, minus the ``loads``/``dumps`` comparison. To everyone else it is a dict.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as reported by the upstream (every field optional)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One captured exchange. Field meanings are part of the storage contract."""

    id: str  # UUIDv7 text, time-sortable (storage.ids.new_capture_id)
    created_at: float  # unix seconds, request arrival
    endpoint: str  # "chat/completions" | "responses" | "completions" | "embeddings"
    method: str
    path: str  # request path as received, e.g. "/v1/chat/completions"
    requested_model: str | None
    returned_model: str | None
    stream: bool
    request_body: bytes  # raw bytes exactly as forwarded
    response_body: bytes  # raw JSON body or SSE transcript, capped
    response_truncated: bool
    response_content_type: str | None
    response: dict[str, Any] | None  # reassembled response object
    status: int | None  # upstream status (None if no response)
    outcome: Outcome
    error: str | None  # short error text for non-completed outcomes (never contains secrets)
    latency_ms: float | None
    ttft_ms: float | None
    usage: Usage
    tags: Mapping[str, str]
    upstream_request_id: str | None
    retry_count: int | None  # x-stainless-retry-count
    key_fingerprint: str | None
    response_id: str | None  # id of the returned object (chatcmpl-…, resp_…, cmpl-…)
    previous_response_id: str | None
    has_tool_calls: bool
