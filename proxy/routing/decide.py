"""Who answers one request: the teacher or the route's student, and whether to shadow it (pure).

Only requests like the training data are eligible for a student: a chat completion with
``n`` of 1, no image, audio or file parts, only function tools the route lists (when it lists
them), and a prompt of at most ``max_prompt_chars`` characters. An ineligible request always
goes to the teacher (and is never shadowed).

A canary is sticky: the request's stable key (its ``user``, ``safety_identifier`` or
``prompt_cache_key``, else the caller's key fingerprint and first user message) is hashed with
the route's name to a point in [0, 100); below ``percent`` the student answers. So one user, or
one conversation, never flips between models while the percentage stays put, and raising the
percentage only adds keys. Shadow sampling uses the same hash (a different salt), so repeats of
one request are sampled alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from proxy.routing.routes import Route

Target = Literal["teacher", "student"]
# The caller's key fingerprint, or how to compute it: only a sticky key without a ``user``-like
# field needs it, so the relay passes a function and most requests never hash their key.
Fingerprint = str | None | Callable[[], str | None]
_MEDIA_PARTS = frozenset({"image_url", "input_image", "input_audio", "file", "input_file"})


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    target: Target
    shadow: bool  # send to the student too, after the teacher answered
    reason: str  # why: "canary", "full", "shadow", "not_eligible: …", "off", "outside_canary"


def ineligible(route: Route, body: dict[str, Any]) -> str | None:
    """Why a student must not answer ``body`` (None: it may)."""
    n = body.get("n", 1)
    if n not in (1, None):
        return "n > 1"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no messages"
    size = 0
    for message in messages:
        if not isinstance(message, dict):
            return "malformed message"
        content = message.get("content")
        if isinstance(content, str):
            size += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    return "malformed content"
                if part.get("type") in _MEDIA_PARTS:
                    return f"{part.get('type')} content"
                text = part.get("text")
                size += len(text) if isinstance(text, str) else 0
    if size > route.max_prompt_chars:
        return "prompt longer than max_prompt_chars"
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            return "malformed tools"
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type") != "function":
                return "a non-function tool"
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if route.tools is not None and name not in route.tools:
                return f"tool {str(name)[:40]!r} unknown to the student"
    if body.get("audio") or "audio" in (body.get("modalities") or []):
        return "audio output"
    return None


def stable_key(body: dict[str, Any], fingerprint: Fingerprint) -> str:
    """The request's sticky key (see the module docstring)."""
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        value = body.get(name)
        if isinstance(value, str) and value:
            return f"{name}:{value}"
    first = ""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            first = content if isinstance(content, str) else repr(content)
            break
    if callable(fingerprint):
        fingerprint = fingerprint()
    return f"fp:{fingerprint or '-'}:{first}"


def point(salt: str, key: str) -> float:
    """``key``'s place in [0, 100), stable for one ``salt``."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100.0


def decide(route: Route, body: dict[str, Any], fingerprint: Fingerprint) -> Decision:
    if route.mode == "off":
        return Decision(route, "teacher", False, "off")
    why = ineligible(route, body)
    if why is not None:
        return Decision(route, "teacher", False, f"not_eligible: {why}")
    if route.mode == "shadow":
        shadow = _sampled(route, body, fingerprint, route.shadow_rate)
        return Decision(route, "teacher", shadow, "shadow")
    if route.mode == "full":
        shadow = _sampled(route, body, fingerprint, route.full_shadow_rate)
        return Decision(route, "student", shadow, "full")
    if point(f"canary:{route.name}", stable_key(body, fingerprint)) < route.percent:
        return Decision(route, "student", False, "canary")
    return Decision(route, "teacher", False, "outside_canary")


def _sampled(route: Route, body: dict[str, Any], fingerprint: Fingerprint, rate: float) -> bool:
    """Whether the request falls in the sampled share ``rate`` (the same for repeats of one
    request); a rate of 0 or 1 needs neither the sticky key nor its hash."""
    if rate >= 1.0 or rate <= 0.0:
        return rate >= 1.0
    return point(f"shadow:{route.name}", stable_key(body, fingerprint)) / 100.0 < rate
