"""An ``ExchangeCopy`` as one byte string, the form a capture waits in the spool.

Pure and cheap: the request path pays for ``encode`` (a small JSON header and a join, a few
microseconds); ``decode`` runs in the indexer. Layout: a 12-byte prefix (version, header
length, request body length, little-endian uint32 each), the header (a JSON array of the
copy's facts, in ``_FIELDS`` order), the request body, the response body. No credential is in
an ``ExchangeCopy``, so none is in a frame.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from proxy.records import ExchangeCopy

VERSION = 1
_PREFIX = struct.Struct("<III")
_FIELDS = (
    "capture_id",
    "created_at",
    "endpoint",
    "method",
    "path",
    "response_truncated",
    "status",
    "content_type",
    "content_encoding",
    "outcome",
    "error",
    "latency_ms",
    "ttft_ms",
    "tags",
    "upstream_request_id",
    "retry_count",
    "key_fingerprint",
)


class FrameError(ValueError):
    """Bytes that are not a frame this version can read."""


def encode(copy: ExchangeCopy) -> bytes:
    return pack(
        [
            copy.capture_id,
            copy.created_at,
            copy.endpoint,
            copy.method,
            copy.path,
            copy.response_truncated,
            copy.status,
            copy.content_type,
            copy.content_encoding,
            copy.outcome,
            copy.error,
            copy.latency_ms,
            copy.ttft_ms,
            copy.tags,
            copy.upstream_request_id,
            copy.retry_count,
            copy.key_fingerprint,
        ],
        copy.request_body,
        copy.response_body,
    )


def pack(head: list[Any], request: bytes, response: bytes) -> bytes:
    """A frame from the values of ``_FIELDS`` in order and the two bodies (the tee's fast
    path: it skips building an ``ExchangeCopy``)."""
    data = orjson.dumps(head)
    return b"".join((_PREFIX.pack(VERSION, len(data), len(request)), data, request, response))


def decode(frame: bytes) -> ExchangeCopy:
    try:
        version, head_size, request_size = _PREFIX.unpack_from(frame)
    except struct.error as exc:
        raise FrameError(f"frame too short ({len(frame)} bytes)") from exc
    if version != VERSION:
        raise FrameError(f"unknown frame version {version}")
    start = _PREFIX.size
    body_start = start + head_size
    response_start = body_start + request_size
    if response_start > len(frame):
        raise FrameError("frame shorter than its prefix says")
    try:
        values: Any = orjson.loads(frame[start:body_start])
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"bad frame header: {exc}") from exc
    if not isinstance(values, list) or len(values) != len(_FIELDS):
        raise FrameError("frame header has the wrong shape")
    fields = dict(zip(_FIELDS, values, strict=True))
    return ExchangeCopy(
        **fields,
        request_body=frame[body_start:response_start],
        response_body=frame[response_start:],
    )
