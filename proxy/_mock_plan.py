"""How the mock upstream answers one request: its options with the x-mock-* headers applied."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

_MAX_HUGE_MIB = 4096
_SIMPLE_MODES = ("invalid_json", "html_502", "empty", "binary", "gzip", "close_after_body", "echo")


@dataclass(frozen=True, slots=True)
class Plan:
    """How to answer one request: `MockOptions`, then the request's x-mock-* headers.

    Modes: `invalid_json` 200 JSON content type, body not JSON · `html_502` a CDN-style 502 page
    · `empty` 200 with no body · `binary` 200 with non-UTF-8 bytes · `gzip` the real body
    compressed (`content-encoding: gzip`) · `huge` a chat completion of `size` bytes, SSE when the
    request says stream:true · `drip` the real body `size` bytes at a time every `every` seconds
    · `redirect` 307 to `location` · `close_after_body` no reply at all · `echo` the request as
    the mock saw it. `reset_after:N` is not a mode: it sets `cut_after` and `reset`.
    """

    latency: float = 0.0  # seconds
    first_byte: float = 0.0
    gap: float = 0.0
    chunks: int | None = None
    status: int | None = None
    cut_after: int | None = None
    reset: bool = False
    mode: str | None = None
    size: int = 0
    every: float = 0.0
    location: bytes = b""


class InvalidMockHeader(ValueError):
    """An x-mock-* request header the mock cannot follow; answered with a 400 envelope."""


def seconds(milliseconds: str | float) -> float:
    number = float(milliseconds)
    if not math.isfinite(number) or number < 0:
        raise ValueError(milliseconds)
    return number / 1000


def _count(value: str, minimum: int) -> int:
    number = int(value)
    if number < minimum:
        raise ValueError(value)
    return number


def _mode(value: str) -> dict[str, Any]:
    name, _, arg = value.partition(":")
    if name in _SIMPLE_MODES and not arg:
        return {"mode": name}
    if name == "huge":
        mib = float(arg)
        if not 0 < mib <= _MAX_HUGE_MIB:
            raise ValueError(value)
        return {"mode": name, "size": int(mib * 1024 * 1024)}
    if name == "drip":
        step, _, every = arg.partition(":")
        return {"mode": name, "size": _count(step, 1), "every": seconds(every)}
    if name == "redirect" and arg:
        return {"mode": name, "location": arg.encode("latin-1")}
    if name == "reset_after":
        return {"cut_after": _count(arg, 0), "reset": True}
    raise ValueError(value)


def apply_headers(plan: Plan, headers: list[tuple[bytes, bytes]]) -> Plan:
    changes: dict[str, Any] = {}
    for name, raw in headers:
        value = raw.decode("latin-1").strip()
        try:
            if name == b"x-mock-latency-ms":
                changes["latency"] = seconds(value)
            elif name == b"x-mock-first-byte-ms":
                changes["first_byte"] = seconds(value)
            elif name == b"x-mock-gap-ms":
                changes["gap"] = seconds(value)
            elif name == b"x-mock-chunks":
                changes["chunks"] = _count(value, 1)
            elif name == b"x-mock-status":
                status = _count(value, 100)
                if status > 599:
                    raise ValueError(value)
                changes["status"] = status if status >= 400 else None
            elif name == b"x-mock-cut-after":
                changes["cut_after"] = _count(value, 0)
            elif name == b"x-mock-mode":
                changes.update(_mode(value))
            else:
                raise InvalidMockHeader(f"unknown mock header {name.decode('latin-1')!r}")
        except ValueError as exc:
            if isinstance(exc, InvalidMockHeader):
                raise
            raise InvalidMockHeader(f"invalid {name.decode('latin-1')}: {value!r}") from exc
    return replace(plan, **changes)
