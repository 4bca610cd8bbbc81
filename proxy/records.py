"""Turn what the tee saw of one exchange into a ``CaptureRecord``: a pure function.

Everything that parses (request JSON, response JSON, SSE decoding, reassembly, usage) happens
here, after the client has its whole response, and never raises: what cannot be parsed is kept
raw and left out of the derived fields.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.reassemble import ENDPOINTS, extract_usage
from proxy.tags import metadata_tags
from proxy.transcript import reassemble_transcript
from proxy.types import JSONObject
from storage.models import CaptureRecord, Outcome, ParsedBody, Usage

MAX_DECODED_BYTES = 64 * 1024 * 1024  # a compressed capture never inflates past this


@dataclass(frozen=True, slots=True)
class ExchangeCopy:
    """What the tee collected: raw bytes and facts, no credentials."""

    capture_id: str
    created_at: float
    endpoint: str
    method: str
    path: str
    request_body: bytes
    response_body: bytes
    response_truncated: bool
    status: int | None
    content_type: str | None
    content_encoding: str | None
    outcome: Outcome
    error: str | None
    latency_ms: float | None
    ttft_ms: float | None
    tags: dict[str, str]
    upstream_request_id: str | None
    retry_count: int | None
    key_fingerprint: str | None
    request: Any = None  # the request body already parsed (by the router), else parsed here


def build_record(copy: ExchangeCopy) -> CaptureRecord:
    request = copy.request if copy.request is not None else _loads(copy.request_body)
    request_obj = request if isinstance(request, dict) else {}
    response, outcome, error = _response_object(copy)
    tags = {**metadata_tags(request_obj), **copy.tags}
    is_embeddings = copy.endpoint == "embeddings"
    if is_embeddings and response is not None:
        # Metadata only: vectors are not teacher data, keep the model and the usage.
        response = {k: v for k, v in response.items() if k != "data"}
    return CaptureRecord(
        id=copy.capture_id,
        created_at=copy.created_at,
        endpoint=copy.endpoint,
        method=copy.method,
        path=copy.path,
        requested_model=_str(request_obj.get("model")),
        returned_model=_str(response.get("model")) if response else None,
        stream=request_obj.get("stream") is True,
        request_body=copy.request_body,
        response_body=b"" if is_embeddings else copy.response_body,
        response_truncated=copy.response_truncated,
        response_content_type=copy.content_type,
        response=response,
        status=copy.status,
        outcome=outcome,
        error=error,
        latency_ms=copy.latency_ms,
        ttft_ms=copy.ttft_ms,
        usage=extract_usage(copy.endpoint, response) if response else Usage(),
        tags=tags,
        upstream_request_id=copy.upstream_request_id,
        retry_count=copy.retry_count,
        key_fingerprint=copy.key_fingerprint,
        response_id=_str(response.get("id")) if response else None,
        previous_response_id=_str(request_obj.get("previous_response_id")),
        has_tool_calls=_has_tool_calls(response),
    )


def _response_object(copy: ExchangeCopy) -> tuple[JSONObject | None, Outcome, str | None]:
    outcome, error = copy.outcome, copy.error
    body = _decoded(copy.response_body, copy.content_encoding)
    if body is None or not body:
        return None, outcome, error
    is_stream = (copy.content_type or "").startswith("text/event-stream")
    if is_stream and copy.endpoint in ENDPOINTS:
        result = reassemble_transcript(copy.endpoint, body)
        if result.error is not None and outcome == "completed":
            message = result.error.get("message")
            outcome, error = "upstream_error", f"error in stream: {message or 'unknown'}"
        return result.response, outcome, error
    parsed = _loads(body)
    if not isinstance(parsed, dict):
        return None, outcome, error
    if body is copy.response_body:  # the stored body parses to this very object: say so
        parsed = ParsedBody(parsed)
    return parsed, outcome, error


def _decoded(body: bytes, encoding: str | None) -> bytes | None:
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate", "x-gzip"):
        return None  # kept raw; br/zstd are not decoded for capture
    try:
        wbits = 47 if encoding != "deflate" else 15  # gzip or zlib header auto-detected
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(body, MAX_DECODED_BYTES)
        return None if inflater.unconsumed_tail else out
    except zlib.error:
        return None


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _has_tool_calls(response: JSONObject | None) -> bool:
    if not response:
        return False
    for choice in response.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and message.get("tool_calls"):
            return True
    for item in response.get("output") or ():
        if isinstance(item, dict) and item.get("type") in ("function_call", "custom_tool_call"):
            return True
    return False
