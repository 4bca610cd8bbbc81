"""Turn the decoded events of a streamed response into the object the API returns unstreamed.

Every function here is pure: events in, a ``ReassemblyResult`` out. Garbage never raises: an
event whose data is not a JSON object is counted in ``parse_errors`` and skipped, and fields of
an unexpected type are ignored.

Chat completions (``reassemble_chat_completion``) fold ``chat.completion.chunk`` objects:
choices by ``index``, each choice's ``delta`` merged into its message by the rules in
``proxy._merge`` (tool calls by their ``index``, strings concatenated, first ``id``/``type``/
``name`` kept), ``logprobs.content``/``.refusal`` lists concatenated, the latest non-null
``finish_reason``. Top-level fields take their latest non-null value, which picks up the
usage-only final chunk (``choices: []``), ``system_fingerprint``, ``service_tier`` and any
unknown field. ``obfuscation`` (per-chunk random padding) is dropped. The stream stops at
``[DONE]``; a chunk ``{"error": ...}`` (or an ``event: error``) is recorded in ``error``.

Legacy completions (``reassemble_completion``) do the same with ``text`` concatenated per
choice and ``logprobs`` lists (``tokens``, ``token_logprobs``, ...) extended.

Normal form. A reassembled object is already in the normal form below, and
``normalize_chat_completion`` / ``normalize_completion`` bring a non-streamed body to it, so a
streamed and a non-streamed capture of the same answer compare equal:

- top level: ``object`` is ``"chat.completion"`` (``"text_completion"``); keys whose value is
  ``null`` or ``[]`` are dropped, except ``choices``; ``obfuscation`` is dropped;
- choice: ``index``, ``message`` (``text`` for completions), ``logprobs`` and ``finish_reason``
  are always present (``null`` when absent); other keys are dropped when ``null`` or ``[]``;
- chat message: ``role`` (``"assistant"`` when missing), ``content`` and ``refusal`` are always
  present (``null`` when no fragment of them arrived; ``""`` if only empty fragments did); other
  keys are dropped when ``null`` or ``[]``, so ``tool_calls`` and ``annotations`` appear only
  when non-empty; tool calls carry no ``index`` and default ``type`` to ``"function"``;
- chat ``logprobs``, when present, has both ``content`` and ``refusal`` (``null`` if absent).

The normal form cannot invent what a stream did not carry: a chat stream has ``usage`` only when
the request set ``stream_options.include_usage``.

Responses (``reassemble_response``) are folded in ``proxy._reassemble_responses``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy._merge import finish_merged, merge_delta
from proxy._reassemble_responses import fold_response_events
from proxy.sse import SSEEvent
from proxy.types import JSONObject
from storage.models import Usage

__all__ = [
    "ENDPOINTS",
    "JSONObject",
    "ReassemblyResult",
    "Usage",
    "extract_usage",
    "normalize_chat_completion",
    "normalize_completion",
    "reassemble",
    "reassemble_chat_completion",
    "reassemble_completion",
    "reassemble_response",
]

ENDPOINTS = ("chat/completions", "responses", "completions")
"""The endpoints ``reassemble`` accepts (a leading ``/`` or ``/v1/`` is also accepted)."""


@dataclass(frozen=True, slots=True)
class ReassemblyResult:
    """The reassembled object and what the stream said about its own ending.

    ``response`` is ``None`` only when no usable event arrived. ``done`` means the stream's end
    marker was seen: ``data: [DONE]`` for chat and completions, a terminal ``response.*`` event
    for Responses. ``complete`` adds that nothing is missing: for chat and completions every
    choice has a ``finish_reason`` and no error arrived; for Responses the final status is
    ``"completed"``. ``error`` is the first in-stream error object.
    """

    response: JSONObject | None
    done: bool = False
    complete: bool = False
    error: JSONObject | None = None
    parse_errors: int = 0


def reassemble(endpoint: str, events: Iterable[SSEEvent]) -> ReassemblyResult:
    """Reassemble a stream from ``endpoint``; ``ValueError`` if it is not one of ENDPOINTS."""
    key = _endpoint_key(endpoint)
    if key == "chat/completions":
        return reassemble_chat_completion(events)
    if key == "responses":
        return reassemble_response(events)
    if key == "completions":
        return reassemble_completion(events)
    raise ValueError(f"no reassembler for endpoint {endpoint!r}; expected one of {ENDPOINTS}")


def reassemble_chat_completion(events: Iterable[SSEEvent]) -> ReassemblyResult:
    """Fold a ``/v1/chat/completions`` stream into a ``chat.completion`` object."""
    return _reassemble_choices(events, "chat.completion", _normalize_chat_choice)


def reassemble_completion(events: Iterable[SSEEvent]) -> ReassemblyResult:
    """Fold a legacy ``/v1/completions`` stream into a ``text_completion`` object."""
    return _reassemble_choices(events, "text_completion", _normalize_completion_choice)


def reassemble_response(events: Iterable[SSEEvent]) -> ReassemblyResult:
    """Fold a ``/v1/responses`` stream into its final ``response`` object.

    See ``proxy._reassemble_responses`` for the fallback used when the stream ends before its
    terminal event.
    """
    payloads, _, parse_errors = _decode(events)
    response, done, complete, error = fold_response_events(payloads)
    return ReassemblyResult(response, done, complete, error, parse_errors)


def normalize_chat_completion(obj: JSONObject) -> JSONObject:
    """Bring a non-streamed ``chat.completion`` body to the normal form (see module doc)."""
    return _normalize_top(obj, "chat.completion", _normalize_chat_choice)


def normalize_completion(obj: JSONObject) -> JSONObject:
    """Bring a non-streamed ``text_completion`` body to the normal form (see module doc)."""
    return _normalize_top(obj, "text_completion", _normalize_completion_choice)


_CHAT_USAGE = (
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)
_RESPONSES_USAGE = (
    "input_tokens",
    "output_tokens",
    "input_tokens_details",
    "output_tokens_details",
)


def extract_usage(endpoint: str, obj: JSONObject | None) -> Usage:
    """Read ``obj["usage"]`` in either naming: chat's ``prompt_tokens``/``completion_tokens``
    or Responses' ``input_tokens``/``output_tokens`` (tried first for ``responses``).

    ``total_tokens`` is the sum of the two when the body omits it. Any endpoint is accepted
    (embeddings use the chat names); non-integer counts read as ``None``.
    """
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return Usage()
    first, second = _CHAT_USAGE, _RESPONSES_USAGE
    if endpoint == "responses" or _endpoint_key(endpoint) == "responses":
        first, second = second, first
    names = first  # the naming the counts use; the endpoint's own when neither is there
    if (
        first[0] not in usage
        and first[1] not in usage
        and (second[0] in usage or second[1] in usage)
    ):
        names = second
    input_name, output_name, input_details, output_details = names
    input_tokens = _count(usage.get(input_name))
    output_tokens = _count(usage.get(output_name))
    total_tokens = _count(usage.get("total_tokens"))
    if total_tokens is None and input_tokens is not None and output_tokens is not None:
        total_tokens = input_tokens + output_tokens
    return Usage(
        input_tokens,
        output_tokens,
        total_tokens,
        _count(_detail(usage, input_details, "cached_tokens")),
        _count(_detail(usage, output_details, "reasoning_tokens")),
    )


# --- internals --------------------------------------------------------------------------------


def _endpoint_key(endpoint: str) -> str:
    key = endpoint.strip("/")
    return key[3:] if key.startswith("v1/") else key


def _count(value: Any) -> int | None:
    return value if type(value) is int else None


def _detail(usage: JSONObject, details: str, name: str) -> Any:
    section = usage.get(details)
    return section.get(name) if isinstance(section, dict) else None


def _decode(events: Iterable[SSEEvent]) -> tuple[list[tuple[str, JSONObject]], bool, int]:
    """Parse event data as JSON objects: (``(event name, object)`` list, saw [DONE], errors)."""
    payloads: list[tuple[str, JSONObject]] = []
    parse_errors = 0
    for event in events:
        data = event.data
        if data.startswith("[DONE]"):  # as the openai SDK tests it
            return payloads, True, parse_errors
        if not data or data.isspace():
            continue
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            parse_errors += 1
            continue
        if isinstance(value, dict):
            payloads.append((event.event, value))
        else:
            parse_errors += 1
    return payloads, False, parse_errors


def _as_error(value: Any) -> JSONObject:
    return value if isinstance(value, dict) else {"message": str(value)}


@dataclass(slots=True)
class _Choice:
    content: JSONObject = field(default_factory=dict)  # merged delta (chat) or {"text": ...}
    logprobs: JSONObject | None = None
    finish_reason: Any = None
    extra: JSONObject = field(default_factory=dict)


_Normalizer = Callable[[JSONObject], JSONObject]


def _reassemble_choices(
    events: Iterable[SSEEvent], object_name: str, normalize_choice: _Normalizer
) -> ReassemblyResult:
    payloads, done, parse_errors = _decode(events)
    return _fold_choices(payloads, done, parse_errors, object_name, normalize_choice)


def _fold_choices(
    payloads: list[tuple[str, JSONObject]],
    done: bool,
    parse_errors: int,
    object_name: str,
    normalize_choice: _Normalizer,
) -> ReassemblyResult:
    top: JSONObject = {}
    choices: dict[int, _Choice] = {}
    error: JSONObject | None = None
    is_chat = object_name == "chat.completion"
    for event_name, chunk in payloads:
        chunk_error = chunk.get("error")
        if chunk_error or event_name == "error":
            if error is None:
                error = _as_error(chunk_error or chunk)
            continue
        raw_choices = chunk.get("choices")
        if isinstance(raw_choices, list):
            for raw in raw_choices:
                if isinstance(raw, dict):
                    _fold_choice(choices, raw, is_chat)
        if None in chunk.values():
            top.update((key, value) for key, value in chunk.items() if value is not None)
        else:
            top.update(chunk)  # the latest non-null value wins
    return _finish_fold(
        top, choices, error, done, parse_errors, object_name, normalize_choice, is_chat
    )


def _finish_fold(
    top: JSONObject,
    choices: dict[int, _Choice],
    error: JSONObject | None,
    done: bool,
    parse_errors: int,
    object_name: str,
    normalize_choice: _Normalizer,
    is_chat: bool,
) -> ReassemblyResult:
    """The result of a fold: ``top`` (latest top-level values) and the folded ``choices``."""
    for key in ("choices", "object", "obfuscation"):
        top.pop(key, None)
    if not top and not choices:
        return ReassemblyResult(None, done, False, error, parse_errors)
    top["object"] = object_name
    top["choices"] = [_finish_choice(index, choices[index], is_chat) for index in sorted(choices)]
    response = _normalize_top(top, object_name, normalize_choice)
    complete = (
        done
        and error is None
        and bool(choices)
        and all(choice.finish_reason is not None for choice in choices.values())
    )
    return ReassemblyResult(response, done, complete, error, parse_errors)


def _fold_choice(choices: dict[int, _Choice], raw: JSONObject, is_chat: bool) -> None:
    index = raw.get("index")
    if type(index) is not int:
        index = 0
    choice = choices.get(index)
    if choice is None:
        choices[index] = choice = _Choice()
    for key, value in raw.items():
        if value is None or key == "index":
            continue
        if key == "finish_reason":
            choice.finish_reason = value
        elif key == "logprobs":
            if isinstance(value, dict):
                choice.logprobs = merge_delta(choice.logprobs or {}, value)
        elif is_chat and key == "delta":
            if isinstance(value, dict):
                merge_delta(choice.content, value)
        elif not is_chat and key == "text":
            if isinstance(value, str):
                choice.content["text"] = choice.content.get("text", "") + value
        else:
            choice.extra[key] = value


def _finish_choice(index: int, choice: _Choice, is_chat: bool) -> JSONObject:
    raw: JSONObject = {"index": index}
    if is_chat:
        raw["message"] = finish_merged(choice.content)
    else:
        raw["text"] = choice.content.get("text", "")
    raw["logprobs"] = finish_merged(choice.logprobs) if choice.logprobs is not None else None
    raw["finish_reason"] = choice.finish_reason
    for key, value in choice.extra.items():
        raw.setdefault(key, value)  # a stray "message" or "text" never replaces the merged one
    return raw


def _is_empty(value: Any) -> bool:
    return value is None or value == []


def _normalize_top(obj: JSONObject, object_name: str, normalize_choice: _Normalizer) -> JSONObject:
    out: JSONObject = {}
    for key in ("id", "object", "created", "model", "choices"):
        if key in obj:
            out[key] = obj[key]
    out["object"] = object_name
    choices = obj.get("choices")
    if isinstance(choices, list):
        out["choices"] = [
            normalize_choice(choice) if isinstance(choice, dict) else choice for choice in choices
        ]
    for key, value in obj.items():
        if key not in out and key != "obfuscation":
            out[key] = value
    return {key: value for key, value in out.items() if key == "choices" or not _is_empty(value)}


def _normalize_choice(choice: JSONObject, body_key: str, body: Any, logprobs: Any) -> JSONObject:
    out: JSONObject = {
        "index": choice.get("index"),
        body_key: body,
        "logprobs": logprobs,
        "finish_reason": choice.get("finish_reason"),
    }
    for key, value in choice.items():
        if key not in out and not _is_empty(value):
            out[key] = value
    return out


def _normalize_chat_choice(choice: JSONObject) -> JSONObject:
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        logprobs = {"content": None, "refusal": None, **logprobs}
    return _normalize_choice(choice, "message", _normalize_message(choice.get("message")), logprobs)


def _normalize_completion_choice(choice: JSONObject) -> JSONObject:
    return _normalize_choice(choice, "text", choice.get("text") or "", choice.get("logprobs"))


def _normalize_message(message: Any) -> JSONObject:
    if not isinstance(message, dict):
        message = {}
    out: JSONObject = {
        "role": message.get("role") or "assistant",
        "content": message.get("content"),
        "refusal": message.get("refusal"),
    }
    for key, value in message.items():
        if key in out or _is_empty(value):
            continue
        if key == "tool_calls" and isinstance(value, list):
            value = [_normalize_tool_call(call) for call in value]
        out[key] = value
    return out


def _normalize_tool_call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    out = {key: value for key, value in call.items() if key != "index"}
    if "type" not in out and "function" in out:
        out["type"] = "function"
    return out
