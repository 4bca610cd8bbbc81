"""Which exchanges are captured, and the tee that copies one of them.

``CapturePolicy`` is the relay's ``TeeFactory``: for each request it decides, cheaply and before
anything goes upstream, whether the exchange is recorded (POST to a captured endpoint, capture
not switched off) and validates the ``X-Stillroom-*`` headers (bad tag syntax is a 400). The
credential is reduced here, at once, to an HMAC fingerprint: the key itself never reaches a
record, a log line or the queue.

``CaptureTee`` appends chunk references up to ``max_bytes`` (no copying, no parsing) while the
relay streams. At the end, with ``deferred`` (a SQLite store), it packs its copy
(``proxy.frames``) for the writer to append to the store's spool, and the indexer process builds
the record later (``proxy.indexer``); otherwise it builds the record (``records.build_record``)
and hands that to the writer. Neither can raise into the relay: a failure is logged and
counted as a drop. Routed exchanges read ``tee.record``, built on first use.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

from proxy import frames
from proxy.capture_indexer import CaptureIndexer
from proxy.errors import InvalidRequest
from proxy.records import ExchangeCopy, build_record
from proxy.tags import SOURCE_TAG, parse_capture_switch, parse_source, parse_tags
from proxy.types import Scope
from proxy.writer import CaptureWriter
from storage.ids import new_capture_id
from storage.models import CaptureRecord, Outcome

logger = logging.getLogger("stillroom.capture")

CAPTURED_ENDPOINTS: dict[str, str] = {
    "/v1/chat/completions": "chat/completions",
    "/v1/responses": "responses",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
SCOPE_TAGS = "stillroom.tags"  # tags from a /t/... base-URL prefix, set by the app
SCOPE_SERVED_BY = "stillroom.served_by"  # the route decision's tags, set by the router
SCOPE_CAPTURE = "stillroom.capture"  # False when the prefix said capture=off
SCOPE_PREFIX_ERROR = "stillroom.prefix_error"  # an InvalidRequest found in the prefix
SCOPE_REQUEST = "stillroom.request"  # the body parsed by the router: not parsed twice


def key_fingerprint(secret: bytes, key: str) -> str:
    """A short, stable id for a credential: HMAC-SHA256 with the install's secret."""
    return "kf_" + hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def credential(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The credential of the first ``authorization`` or ``api-key`` header, if any."""
    for name, value in headers:
        if name == b"authorization" or name == b"api-key":
            return _credential_value(name, value)
    return None


def _credential_value(name: bytes, value: bytes) -> str:
    """The credential an ``authorization`` or ``api-key`` header carries (may be empty)."""
    text = value.decode("latin-1").strip()
    if name == b"api-key":
        return text
    scheme, _, token = text.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else text


FINGERPRINT_CACHE_SIZE = 1024  # distinct credential headers remembered, oldest forgotten first


class CaptureDrops:
    """Drops that happen before the writer sees a record (the writer counts its own)."""

    def __init__(self) -> None:
        self.build_error = 0


class CaptureStats:
    """The writer's counters plus ours and the indexer's, as the metrics module reads them."""

    def __init__(
        self, writer: CaptureWriter, drops: CaptureDrops, indexer: CaptureIndexer | None = None
    ) -> None:
        self._writer = writer
        self._drops = drops
        self._indexer = indexer

    @property
    def indexed_total(self) -> int:
        """Captures written as records (with deferred indexing, fewer than written)."""
        return self._writer.written_total if self._indexer is None else self._indexer.indexed_total

    @property
    def index_backlog_bytes(self) -> int:
        return 0 if self._indexer is None else self._indexer.backlog_bytes

    @property
    def index_lag_s(self) -> float:
        return 0.0 if self._indexer is None else self._indexer.lag_s

    @property
    def spool_skipped_bytes(self) -> int:
        return 0 if self._indexer is None else self._indexer.skipped_bytes

    @property
    def index_retries_total(self) -> int:
        return 0 if self._indexer is None else self._indexer.retries_total

    @property
    def indexer_restarts_total(self) -> int:
        return 0 if self._indexer is None else self._indexer.restarts

    @property
    def written_total(self) -> int:
        return self._writer.written_total

    @property
    def queue_depth(self) -> int:
        return self._writer.queue_depth

    @property
    def queue_bytes(self) -> int:
        return self._writer.queue_bytes

    def dropped_total(self) -> dict[str, int]:
        dropped = {**self._writer.dropped_total, "capture_error": self._drops.build_error}
        if self._indexer is not None:
            for reason, n in self._indexer.dropped_total().items():
                dropped[reason] += n
        return dropped


class CapturePolicy:
    def __init__(
        self,
        writer: CaptureWriter,
        *,
        max_bytes: int,
        fingerprint_secret: bytes,
        drops: CaptureDrops,
        enabled: bool = True,
        deferred: bool = False,
    ) -> None:
        self._writer = writer
        self.deferred = deferred
        self.max_bytes = max_bytes
        self._secret = fingerprint_secret
        self._drops = drops
        self._enabled = enabled
        # (header name, raw value) -> fingerprint: the HMAC costs more than the rest of the
        # policy. In memory only, like the request's own headers; never logged or persisted.
        self._fingerprints: dict[tuple[bytes, bytes], str | None] = {}

    def _fingerprint(self, name: bytes, value: bytes) -> str | None:
        cache = self._fingerprints
        header = (name, value)
        try:
            return cache[header]
        except KeyError:
            pass
        credential = _credential_value(name, value)
        fingerprint = key_fingerprint(self._secret, credential) if credential else None
        if len(cache) >= FINGERPRINT_CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[header] = fingerprint
        return fingerprint

    def __call__(
        self, scope: Scope, body: bytes, stillroom_headers: dict[bytes, bytes]
    ) -> CaptureTee | None:
        # Validate our input on every request, captured or not: bad input is always a 400.
        prefix_error: InvalidRequest | None = scope.get(SCOPE_PREFIX_ERROR)
        if prefix_error is not None:
            raise prefix_error
        header_tags = stillroom_headers.get(b"x-stillroom-tags")
        tags = parse_tags(header_tags.decode("latin-1"), "X-Stillroom-Tags") if header_tags else {}
        source = stillroom_headers.get(b"x-stillroom-source")
        if source is not None:
            tags[SOURCE_TAG] = parse_source(source.decode("latin-1"))
        served_by = scope.get(SCOPE_SERVED_BY)
        if served_by is not None:
            tags.update(served_by)
        switch = stillroom_headers.get(b"x-stillroom-capture")
        wanted = (
            parse_capture_switch(switch.decode("latin-1"), "X-Stillroom-Capture")
            if switch
            else True
        )
        endpoint = CAPTURED_ENDPOINTS.get(scope["path"])
        if (
            not self._enabled
            or not wanted
            or endpoint is None
            or scope["method"] != "POST"
            or scope.get(SCOPE_CAPTURE) is False
        ):
            return None
        prefix_tags: dict[str, str] | None = scope.get(SCOPE_TAGS)
        if prefix_tags:
            tags = {**prefix_tags, **tags}
        fingerprint: str | None = None
        credential_seen = False
        retry: int | None = None
        for name, value in scope["headers"]:
            if name == b"x-stainless-retry-count":
                retry = int(value) if value.isdigit() else None
            elif not credential_seen and (name == b"authorization" or name == b"api-key"):
                credential_seen = True  # the first of the two headers decides, as in credential
                fingerprint = self._fingerprint(name, value)
        return CaptureTee(
            self,
            endpoint=endpoint,
            method=scope["method"],
            path=scope["path"],
            body=body,
            tags=tags,
            retry_count=retry,
            fingerprint=fingerprint,
            request=scope.get(SCOPE_REQUEST),
        )

    def finish(self, copy: ExchangeCopy) -> CaptureRecord | None:
        """Build the record and queue it for the writer; the record (None if it failed)."""
        record = self.build(copy)
        if record is None:
            self._drops.build_error += 1
            return None
        self._writer.submit(record)
        return record

    def spool(self, head: list[Any], request: bytes, response: bytes) -> None:
        """Queue an exchange, packed (``frames.pack``), for the spool (deferred indexing)."""
        try:
            packed = frames.pack(head, request, response)
        except Exception:  # the one broad catch: a capture bug must never reach the client
            self._drops.build_error += 1
            logger.exception("could not pack capture %s; dropped", head[0])
            return
        self._writer.submit(packed)

    @staticmethod
    def build(copy: ExchangeCopy) -> CaptureRecord | None:
        """The record of ``copy``; None (logged) when it cannot be built."""
        try:
            return build_record(copy)
        except Exception:  # the one broad catch: a capture bug must never reach the client
            logger.exception("could not build capture %s; dropped", copy.capture_id)
            return None


class CaptureTee:
    __slots__ = (
        "_chunks",
        "_ct",
        "_ce",
        "_end",
        "_policy",
        "_record",
        "_request_id",
        "_size",
        "_started",
        "_status",
        "_truncated",
        "body",
        "capture_id",
        "request",
        "created_at",
        "endpoint",
        "fingerprint",
        "method",
        "path",
        "retry_count",
        "tags",
    )

    def __init__(
        self,
        policy: CapturePolicy,
        *,
        endpoint: str,
        method: str,
        path: str,
        body: bytes,
        tags: dict[str, str],
        retry_count: int | None,
        fingerprint: str | None,
        request: Any = None,
    ) -> None:
        self._policy = policy
        self.request = request
        self.capture_id = new_capture_id()
        self.created_at = time.time()
        self._started = time.perf_counter()
        self.endpoint = endpoint
        self.method = method
        self.path = path
        self.body = body
        self.tags = tags
        self.retry_count = retry_count
        self.fingerprint = fingerprint
        self._chunks: list[bytes] = []
        self._size = 0
        self._truncated = False
        self._status: int | None = None
        self._ct: str | None = None
        self._ce: str | None = None
        self._request_id: str | None = None
        self._end: tuple[bytes, Outcome, str | None, float, float | None] | None = None
        self._record: CaptureRecord | None = None

    @property
    def record(self) -> CaptureRecord | None:
        """The exchange's record once it ended (routing and shadow traffic read it); built here
        on first use when the indexer builds the stored one."""
        if self._record is None and (copy := self.copy()) is not None:
            self._record = self._policy.build(copy)
        return self._record

    def on_response_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._status = status
        for name, value in headers:
            if name == b"content-type":
                self._ct = value.decode("latin-1")
            elif name == b"content-encoding":
                self._ce = value.decode("latin-1").strip().lower()
            elif name == b"x-request-id":
                self._request_id = value.decode("latin-1")

    def on_chunk(self, chunk: bytes) -> None:
        room = self._policy.max_bytes - self._size
        if room <= 0:
            self._truncated = True
            return
        if len(chunk) > room:
            chunk = chunk[:room]
            self._truncated = True
        self._chunks.append(chunk)
        self._size += len(chunk)

    def on_end(self, outcome: Outcome, error: str | None, ttfb: float | None) -> None:
        latency_ms = (time.perf_counter() - self._started) * 1000.0
        ttft_ms = ttfb * 1000.0 if ttfb is not None else None
        response = b"".join(self._chunks)
        self._end = (response, outcome, error, latency_ms, ttft_ms)
        if self._policy.deferred:
            # The values in frames._FIELDS order (tests check this equals frames.encode).
            head = [
                self.capture_id,
                self.created_at,
                self.endpoint,
                self.method,
                self.path,
                self._truncated,
                self._status,
                self._ct,
                self._ce,
                outcome,
                error,
                latency_ms,
                ttft_ms,
                self.tags,
                self._request_id,
                self.retry_count,
                self.fingerprint,
            ]
            self._policy.spool(head, self.body, response)
        elif (copy := self.copy()) is not None:
            self._record = self._policy.finish(copy)

    def copy(self) -> ExchangeCopy | None:
        """What the tee saw, once the exchange ended (None before)."""
        if self._end is None:
            return None
        response, outcome, error, latency_ms, ttft_ms = self._end
        return ExchangeCopy(
            capture_id=self.capture_id,
            created_at=self.created_at,
            endpoint=self.endpoint,
            method=self.method,
            path=self.path,
            request_body=self.body,
            response_body=response,
            response_truncated=self._truncated,
            status=self._status,
            content_type=self._ct,
            content_encoding=self._ce,
            outcome=outcome,
            error=error,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            tags=self.tags,
            upstream_request_id=self._request_id,
            retry_count=self.retry_count,
            key_fingerprint=self.fingerprint,
            request=self.request,
        )
