"""Capture records to SQLite rows and back (private to the SQLite store).

Encoding is pure and runs off the event loop (``asyncio.to_thread``); the store only executes
the prepared rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from storage._blobs import build_manifest, compress, decompress, rebuild_body
from storage.models import CaptureRecord, Outcome, ParsedBody, Usage

JSON_RAW = 0
JSON_DEFLATE = 1
JSON_FROM_BODY = 2  # the reassembled object equals the parsed response body: not stored twice
JSON_STDLIB = 3  # written by the standard library (values orjson cannot encode exactly)


CAPTURE_COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "endpoint",
    "method",
    "path",
    "model",
    "requested_model",
    "returned_model",
    "stream",
    "status",
    "outcome",
    "error",
    "latency_ms",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "has_tool_calls",
    "response_id",
    "previous_response_id",
    "upstream_request_id",
    "retry_count",
    "key_fingerprint",
    "request_size",
    "request_codec",
    "request_manifest",
    "response_size",
    "response_truncated",
    "response_content_type",
    "response_codec",
    "response_body",
    "response_json_codec",
    "response_json",
)


@dataclass(slots=True)
class EncodedCapture:
    id: str
    row: tuple[Any, ...]  # values in CAPTURE_COLUMNS order
    tags: list[tuple[str, str, str]]  # (capture_id, key, value)
    digests: list[bytes]  # blob digests of the request body, in order (duplicates kept)


@dataclass(slots=True)
class EncodedBatch:
    captures: list[EncodedCapture]
    blobs: dict[bytes, tuple[int, int, bytes]]  # digest -> (codec, size, stored bytes)


def encode_batch(records: Sequence[CaptureRecord]) -> EncodedBatch:
    """Encode records; a repeated id keeps its first record (the store skips stored ids)."""
    captures: list[EncodedCapture] = []
    segments: dict[bytes, bytes] = {}
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            continue
        seen.add(record.id)
        captures.append(_encode_record(record, segments))
    blobs = {}
    for digest, segment in segments.items():
        codec, stored = compress(segment)
        blobs[digest] = (codec, len(segment), stored)
    return EncodedBatch(captures, blobs)


def _encode_record(record: CaptureRecord, segments: dict[bytes, bytes]) -> EncodedCapture:
    manifest, digests = build_manifest(record.request_body, segments)
    request_codec, request_manifest = compress(manifest)
    body_codec, body = compress(record.response_body)
    json_codec, json_data = _encode_response(record)
    usage = record.usage
    row = (
        record.id,
        record.created_at,
        record.endpoint,
        record.method,
        record.path,
        record.returned_model if record.returned_model is not None else record.requested_model,
        record.requested_model,
        record.returned_model,
        record.stream,
        record.status,
        record.outcome,
        record.error,
        record.latency_ms,
        record.ttft_ms,
        usage.input_tokens,
        usage.output_tokens,
        usage.total_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
        record.has_tool_calls,
        record.response_id,
        record.previous_response_id,
        record.upstream_request_id,
        record.retry_count,
        record.key_fingerprint,
        len(record.request_body),
        request_codec,
        request_manifest,
        len(record.response_body),
        record.response_truncated,
        record.response_content_type,
        body_codec,
        body,
        json_codec,
        json_data,
    )
    tags = [(record.id, str(key), str(value)) for key, value in record.tags.items()]
    return EncodedCapture(record.id, row, tags, digests)


def _encode_response(record: CaptureRecord) -> tuple[int | None, bytes | None]:
    response = record.response
    if response is None:
        return None, None
    from_body = type(response) is ParsedBody
    try:
        text = orjson.dumps(response)
        # orjson writes NaN and infinities as null, which would not round-trip.
        if not from_body and b"null" in text and _has_non_finite(response):
            raise TypeError("non-finite float")
    except TypeError:  # orjson.JSONEncodeError is a TypeError (e.g. an int over 64 bits)
        try:
            return JSON_STDLIB, json.dumps(response).encode()  # ASCII: lone surrogates too
        except (TypeError, ValueError) as exc:
            raise ValueError(f"capture {record.id}: response is not JSON: {exc}") from exc
    body = record.response_body
    if not record.response_truncated and body[:1] == b"{" and len(body) >= len(text):
        if from_body:  # orjson.loads(body) is the response: same bytes by construction
            return JSON_FROM_BODY, None
        # Same bytes once normalised means same keys, order and types: keep the body only.
        try:
            if orjson.dumps(orjson.loads(body)) == text:
                return JSON_FROM_BODY, None
        except orjson.JSONDecodeError:
            pass
    codec, stored = compress(text)
    return (JSON_DEFLATE if codec else JSON_RAW), stored


def _has_non_finite(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def request_manifest(values: Mapping[str, Any]) -> bytes:
    return decompress(values["request_codec"], values["request_manifest"])


def decode_capture(
    values: Mapping[str, Any], tags: Mapping[str, str], blobs: dict[bytes, bytes]
) -> CaptureRecord:
    """Rebuild a record from its row, its tags and the (decompressed) segments it uses."""
    request_body = rebuild_body(request_manifest(values), blobs)
    if len(request_body) != values["request_size"]:
        raise ValueError(f"capture {values['id']}: request body size mismatch")
    response_body = decompress(values["response_codec"], values["response_body"])
    return CaptureRecord(
        id=values["id"],
        created_at=values["created_at"],
        endpoint=values["endpoint"],
        method=values["method"],
        path=values["path"],
        requested_model=values["requested_model"],
        returned_model=values["returned_model"],
        stream=bool(values["stream"]),
        request_body=request_body,
        response_body=response_body,
        response_truncated=bool(values["response_truncated"]),
        response_content_type=values["response_content_type"],
        response=_decode_response(
            values["response_json_codec"], values["response_json"], response_body
        ),
        status=values["status"],
        outcome=cast(Outcome, values["outcome"]),
        error=values["error"],
        latency_ms=values["latency_ms"],
        ttft_ms=values["ttft_ms"],
        usage=Usage(
            input_tokens=values["input_tokens"],
            output_tokens=values["output_tokens"],
            total_tokens=values["total_tokens"],
            cached_tokens=values["cached_tokens"],
            reasoning_tokens=values["reasoning_tokens"],
        ),
        tags=dict(tags),
        upstream_request_id=values["upstream_request_id"],
        retry_count=values["retry_count"],
        key_fingerprint=values["key_fingerprint"],
        response_id=values["response_id"],
        previous_response_id=values["previous_response_id"],
        has_tool_calls=bool(values["has_tool_calls"]),
    )


def _decode_response(codec: int | None, data: bytes | None, body: bytes) -> dict[str, Any] | None:
    if codec is None:
        return None
    if codec == JSON_FROM_BODY:
        return cast(dict[str, Any], orjson.loads(body))
    if codec == JSON_STDLIB:
        return cast(dict[str, Any], json.loads(cast(bytes, data)))
    if codec in (JSON_RAW, JSON_DEFLATE):
        return cast(dict[str, Any], orjson.loads(decompress(codec, cast(bytes, data))))
    raise ValueError(f"unknown response JSON codec {codec}")
