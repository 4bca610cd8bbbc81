"""The proxy's own errors, and how they look on the wire.

Hierarchy::

    ProxyError                      an error the proxy answers itself (never an upstream answer)
    ├── UpstreamError               the upstream could not give a complete answer
    │   ├── UpstreamTimeout         connect, first byte or idle timeout          → 504
    │   ├── UpstreamUnavailable     refused, unreachable, DNS, TLS               → 502
    │   └── UpstreamProtocolError   closed without a reply, broken framing       → 502
    ├── ShuttingDown                cut at the end of the drain window           → 503
    ├── ProxyBusy                   request bodies held over the global budget   → 503
    ├── RequestTooLarge             body over STILLROOM_MAX_REQUEST_BYTES        → 413
    ├── InvalidRequest              malformed request the proxy will not forward → 400
    ├── RouteNotFound               a path the proxy does not serve              → 404
    ├── AdminAuthError              admin route without the admin bearer token   → 401
    ├── MethodNotAllowed            a served path, but not with this method      → 405
    ├── UnprocessableRequest        well-formed but refused (unscoped bulk edit) → 422
    ├── CaptureNotStoredYet         a capture id handed out, its capture on its
    │                               way to the store (proxy.capture_pending)     → 409
    └── StoreNotReady               the store failed or is not open              → 503

Upstream 4xx/5xx answers are *not* exceptions: they pass through byte for byte. Every error the
proxy raises is answered with OpenAI's envelope ``{"error": {"message", "type", "param",
"code"}}`` so the SDKs parse it (and retry 502/504). Messages never carry secrets.
"""

from __future__ import annotations

import httpx
import orjson


class ProxyError(Exception):
    status_code = 500
    error_type = "proxy_error"
    code: str | None = "proxy_error"
    retry_after_s: int | None = None  # sent as Retry-After when set

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_json(self) -> bytes:
        return error_body(self.message, self.error_type, self.code, self.param)


class UpstreamError(ProxyError):
    status_code = 502
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    status_code = 502
    code = "upstream_unavailable"


class UpstreamProtocolError(UpstreamError):
    status_code = 502
    code = "upstream_protocol_error"


class ShuttingDown(ProxyError):
    status_code = 503
    code = "proxy_shutting_down"


class ProxyBusy(ProxyError):
    status_code = 503
    code = "proxy_busy"


class RequestTooLarge(ProxyError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class InvalidRequest(ProxyError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class RouteNotFound(ProxyError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class AdminAuthError(ProxyError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class MethodNotAllowed(ProxyError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class UnprocessableRequest(ProxyError):
    status_code = 422
    error_type = "invalid_request_error"
    code = "unprocessable_request"


class CaptureNotStoredYet(ProxyError):
    status_code = 409  # retried by the OpenAI SDKs, with Retry-After
    error_type = "invalid_request_error"
    code = "capture_not_stored_yet"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, param="id")
        self.retry_after_s = retry_after_s


class StoreNotReady(ProxyError):
    status_code = 503
    error_type = "server_error"
    code = "store_unavailable"


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def upstream_error(exc: httpx.TransportError) -> UpstreamError:
    """Our exception for an httpx transport exception (raise it ``from exc``)."""
    if isinstance(exc, httpx.TimeoutException):
        phase = "connect" if isinstance(exc, httpx.ConnectTimeout) else "read"
        return UpstreamTimeout(f"upstream {phase} timeout")
    if isinstance(exc, httpx.ConnectError | httpx.UnsupportedProtocol):
        return UpstreamUnavailable("upstream unreachable")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return UpstreamProtocolError("upstream closed the connection without a complete answer")
    return UpstreamUnavailable("upstream transport error")
