"""The one place that decides which headers cross the proxy, in each direction.

Requests: hop-by-hop fields (RFC 9110 §7.6.1, plus every field named in ``Connection``),
``Host`` (the upstream's is used), framing (``Content-Length`` is recomputed from the body we
forward), ``Expect`` (the proxy reads the whole body itself), ``Proxy-Authorization`` (meant for
us, never the upstream) and our own ``X-Stillroom-*`` are dropped; everything else, including
``Authorization``, passes byte for byte. The proxy never reads ``Host`` or ``X-Forwarded-*`` to
decide where to send a request: the upstream is operator configuration only.

Responses: hop-by-hop fields are dropped; the body is relayed raw (``aiter_raw``), so
``Content-Encoding`` and ``Content-Length`` stay true and are kept. Event streams get
``X-Accel-Buffering: no`` so a buffering reverse proxy in front of us does not hold events back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

RawHeaders = list[tuple[bytes, bytes]]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
_STILLROOM_PREFIX = b"x-stillroom-"


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def upstream_request_headers(
    client_headers: Sequence[tuple[bytes, bytes]], api_key: str | None = None
) -> tuple[RawHeaders, dict[bytes, bytes]]:
    """Headers to send upstream, and the ``x-stillroom-*`` ones the proxy consumed.

    ``client_headers`` are ASGI headers (lower-case names). ``api_key`` is added as a bearer
    ``Authorization`` only when the client sent none.
    """
    named = _connection_tokens(client_headers)
    drop = _REQUEST_DROP | named if named else _REQUEST_DROP
    out: RawHeaders = []
    ours: dict[bytes, bytes] = {}
    has_auth = False
    for name, value in client_headers:
        if name in drop:
            continue
        if name.startswith(_STILLROOM_PREFIX):
            ours[name] = value
            continue
        if name == b"authorization" or name == b"api-key":
            has_auth = True
        out.append((name, value))
    if api_key is not None and not has_auth:
        out.append((b"authorization", b"Bearer " + api_key.encode("latin-1")))
    return out, ours


def client_response_headers(upstream_headers: Iterable[tuple[bytes, bytes]]) -> RawHeaders:
    """Upstream response headers as the client should get them (names lower-cased)."""
    pairs = [(name.lower(), value) for name, value in upstream_headers]
    named = _connection_tokens(pairs)
    drop = HOP_BY_HOP | named if named else HOP_BY_HOP
    out: RawHeaders = []
    is_event_stream = False
    for name, value in pairs:
        if name in drop:
            continue
        if name == b"content-type" and value.startswith(b"text/event-stream"):
            is_event_stream = True
        out.append((name, value))
    if is_event_stream:
        out.append((b"x-accel-buffering", b"no"))
    return out


def has_conflicting_framing(client_headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Both Content-Length and Transfer-Encoding: a smuggling attempt (RFC 9112 §6.3)."""
    has_length = has_chunked = False
    for name, _ in client_headers:
        if name == b"content-length":
            has_length = True
        elif name == b"transfer-encoding":
            has_chunked = True
    return has_length and has_chunked


def declared_length(client_headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    """The request's Content-Length, or None when absent; ValueError when malformed."""
    for name, value in client_headers:
        if name == b"content-length":
            if not value.strip().isdigit():
                raise ValueError("malformed Content-Length")
            return int(value)
    return None
