"""Bodies the mock upstream sends when scripted to misbehave: error envelopes, broken bodies, and
huge bodies generated piece by piece (never held in memory whole)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from proxy._mock_payloads import CREATED, DONE, FINGERPRINT

# status -> (type, code, message), following what OpenAI sends for each
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "The mock upstream was told to reject this request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: sk-mock."),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    409: ("invalid_request_error", "conflict", "The request conflicts with another request."),
    422: ("invalid_request_error", None, "The request could not be processed."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again in 1s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    504: ("server_error", None, "Gateway timeout."),
}


def error_envelope(
    status: int, message: str | None = None, *, param: str | None = None, code: str | None = None
) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}` for `status`, as OpenAI words it."""
    kind, default_code, default_message = _ERRORS.get(
        status,
        (
            "server_error" if status >= 500 else "invalid_request_error",
            None,
            f"Mock error {status}.",
        ),
    )
    if message is None:
        message, code = default_message, default_code
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


INVALID_JSON = (
    b'{"id":"chatcmpl-broken","object":"chat.completion","choices":[{"index":0,"message":{"co'
)
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
BINARY = bytes(range(0x80, 0x100)) + b"\xff\xfe\x00\xc3\x28"  # no prefix of it is valid UTF-8

_PIECE = 16_384
_FILLER = (b"stillroom mock huge body filler text " * (_PIECE // 32 + 1))[: _PIECE + 1]


def huge_json(model: str, size: int) -> tuple[int, Iterator[bytes]]:
    """A chat completion of `size` bytes (or a little more when `size` is tiny), in 16 KiB pieces;
    returns (content length, pieces)."""
    head = (
        b'{"id":"chatcmpl-huge","object":"chat.completion","created":%d,"model":%s,'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"'
    ) % (CREATED, orjson.dumps(model))
    tokens = size // 4
    usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
    tail = (
        b'","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"length"}],'
        b'"usage":%s,"system_fingerprint":"%s"}'
    ) % (orjson.dumps(usage), FINGERPRINT.encode())
    filler = max(0, size - len(head) - len(tail))

    def pieces() -> Iterator[bytes]:
        yield head
        left = filler
        while left > 0:
            yield _FILLER[: min(left, _PIECE)]
            left -= _PIECE
        yield tail

    return len(head) + filler + len(tail), pieces()


def huge_events(model: str, size: int) -> Iterator[bytes]:
    """A chat completion stream of `size` bytes (more when `size` is tiny), ~16 KiB an event."""
    base = (
        b'data: {"id":"chatcmpl-huge","object":"chat.completion.chunk","created":%d,"model":%s,'
        b'"system_fingerprint":"%s","choices":[{"index":0,"delta":'
    ) % (CREATED, orjson.dumps(model), FINGERPRINT.encode())
    first = base + b'{"role":"assistant","content":"","refusal":null},"logprobs":null,'
    first += b'"finish_reason":null}]}\n\n'
    last = base + b'{},"logprobs":null,"finish_reason":"length"}]}\n\n'
    before, after = base + b'{"content":"', b'"},"logprobs":null,"finish_reason":null}]}\n\n'
    overhead = len(before) + len(after)
    budget = size - len(first) - len(last) - len(DONE)
    count = max(1, -(-budget // (overhead + _PIECE)))
    content = max(count, budget - count * overhead)  # spread evenly: every piece ≤ _PIECE, ≥ 1
    share, extra = divmod(content, count)
    yield first
    for i in range(count):
        yield before + _FILLER[: share + (i < extra)] + after
    yield last
    yield DONE
