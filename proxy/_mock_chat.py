"""Chat Completions and legacy Completions bodies for the mock upstream.

A chat whose last message contains ``[refuse]`` is refused (``message.refusal``, streamed as
``delta.refusal``), like a model declining a request, so tests can produce refusals.

Both stream as `data:`-only SSE ending in `data: [DONE]`. Chat streams carry a role chunk, content
(or per-index `tool_calls` fragments whose arguments arrive in several pieces), and a finish chunk
per choice, with choices interleaved when `n` > 1; `stream_options.include_usage` adds the final
usage chunk with `choices: []`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from proxy._mock_payloads import (
    CREATED,
    DONE,
    FINGERPRINT,
    MAX_CHOICES,
    Draft,
    InvalidRequest,
    answer_length,
    cached_tokens,
    include_usage,
    interleave,
    model_of,
    pick_tools,
    positive_int,
    reasoning_tokens,
    sse,
    text_chars,
    text_draft,
    token_limit,
    tool_draft,
    words,
)

# --- chat completions ---------------------------------------------------------------------------


def _chat_tools(body: dict[str, Any]) -> list[tuple[str, Any]]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    found = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            found.append((function["name"], function.get("parameters")))
    return found


def chat_drafts(body: dict[str, Any], digest: bytes, chunks: int | None) -> list[Draft]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", "messages")
    n = positive_int(body, "n", 1, MAX_CHOICES)
    choice = body.get("tool_choice")
    function = choice.get("function") if isinstance(choice, dict) else None
    forced = function.get("name") if isinstance(function, dict) else None
    last = messages[-1]
    if (
        isinstance(last, dict)
        and isinstance(last.get("content"), str)
        and REFUSE in last["content"]
    ):
        return [Draft(list(REFUSAL_PIECES), [], "stop", refusal=True) for _ in range(n)]
    answered = isinstance(last, dict) and last.get("role") == "tool"
    tools = [] if answered else _chat_tools(body)
    calls = pick_tools(tools, choice, body.get("parallel_tool_calls") is not False, forced)
    length = answer_length(digest, chunks)
    limit = token_limit(body, "max_completion_tokens", "max_tokens")
    if calls:
        return [tool_draft(digest, i, calls) for i in range(n)]
    return [text_draft(digest, i, length, limit) for i in range(n)]


def chat_usage(body: dict[str, Any], model: str, digest: bytes, drafts: list[Draft]) -> Any:
    messages = body["messages"]
    prompt = 3 + sum(3 + text_chars(m.get("content")) // 4 for m in messages if isinstance(m, dict))
    if body.get("tools"):
        prompt += len(orjson.dumps(body["tools"])) // 4
    reasoning = reasoning_tokens(model, digest)
    completion = sum(d.tokens for d in drafts) + reasoning
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached_tokens(prompt), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_message(draft: Draft) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if draft.refusal:
        message["refusal"] = draft.text
    elif draft.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in draft.calls
        ]
    else:
        message["content"] = draft.text
    message["annotations"] = []
    return message


def chat_completion(body: dict[str, Any], digest: bytes, chunks: int | None) -> bytes:
    model = model_of(body)
    drafts = chat_drafts(body, digest, chunks)
    return orjson.dumps(
        {
            "id": "chatcmpl-" + digest.hex()[:29],
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": _chat_message(d),
                    "logprobs": None,
                    "finish_reason": d.finish_reason,
                }
                for i, d in enumerate(drafts)
            ],
            "usage": chat_usage(body, model, digest, drafts),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
    )


def _chat_deltas(draft: Draft) -> Iterator[tuple[dict[str, Any], str | None]]:
    if draft.refusal:
        yield {"role": "assistant", "content": None, "refusal": ""}, None
        for piece in draft.pieces:
            yield {"refusal": piece}, None
    elif not draft.calls:
        yield {"role": "assistant", "content": "", "refusal": None}, None
        for piece in draft.pieces:
            yield {"content": piece}, None
    for i, call in enumerate(draft.calls):
        function = {"name": call.name, "arguments": ""}
        head = {"index": i, "id": call.id, "type": "function", "function": function}
        if i == 0:
            yield (
                {"role": "assistant", "content": None, "tool_calls": [head], "refusal": None},
                None,
            )
        else:
            yield {"tool_calls": [head]}, None
        for piece in call.argument_pieces():
            yield {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}, None
    yield {}, draft.finish_reason


def chat_events(body: dict[str, Any], digest: bytes, chunks: int | None) -> list[bytes]:
    model = model_of(body)
    drafts = chat_drafts(body, digest, chunks)
    usage_wanted = include_usage(body)
    head = orjson.dumps(
        {
            "id": "chatcmpl-" + digest.hex()[:29],
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
    )[:-1]
    prefix = b"data: " + head + b',"choices":['
    suffix = b'],"usage":null}\n\n' if usage_wanted else b"]}\n\n"
    per_choice = [
        [
            prefix
            + orjson.dumps(
                {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            )
            + suffix
            for delta, finish_reason in _chat_deltas(draft)
        ]
        for i, draft in enumerate(drafts)
    ]
    events = interleave(per_choice)
    if usage_wanted:
        usage = orjson.dumps(chat_usage(body, model, digest, drafts))
        events.append(b"data: " + head + b',"choices":[],"usage":' + usage + b"}\n\n")
    events.append(DONE)
    return events


REFUSE = "[refuse]"
REFUSAL_PIECES = ("I'm sorry, but ", "I can't help with that.")


# --- legacy completions -------------------------------------------------------------------------


def _prompts(body: dict[str, Any]) -> list[Any]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return [prompt]
        return prompt
    raise InvalidRequest("'prompt' must be a string, an array of strings or of tokens.", "prompt")


def _completion_usage(prompts: list[Any], drafts: list[Draft]) -> Any:
    prompt = sum(len(p) if isinstance(p, list) else max(1, text_chars(p) // 4) for p in prompts)
    completion = sum(d.tokens for d in drafts)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion_drafts(body: dict[str, Any], digest: bytes, chunks: int | None) -> list[Draft]:
    n = positive_int(body, "n", 1, MAX_CHOICES)
    limit = token_limit(body, "max_tokens") or 16  # the legacy default
    length = answer_length(digest, chunks)
    total = len(_prompts(body)) * n
    return [
        Draft(words(digest, i, min(length, limit), sentence=False), [], "length")
        if limit < length
        else Draft(words(digest, i, length, sentence=False), [], "stop")
        for i in range(total)
    ]


def completion(body: dict[str, Any], digest: bytes, chunks: int | None) -> bytes:
    model = model_of(body)
    drafts = _completion_drafts(body, digest, chunks)
    return orjson.dumps(
        {
            "id": "cmpl-" + digest.hex()[:29],
            "object": "text_completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {"text": d.text, "index": i, "logprobs": None, "finish_reason": d.finish_reason}
                for i, d in enumerate(drafts)
            ],
            "usage": _completion_usage(_prompts(body), drafts),
        }
    )


def completion_events(body: dict[str, Any], digest: bytes, chunks: int | None) -> list[bytes]:
    model = model_of(body)
    drafts = _completion_drafts(body, digest, chunks)
    base: dict[str, Any] = {
        "id": "cmpl-" + digest.hex()[:29],
        "object": "text_completion",
    }
    base |= {"created": CREATED, "model": model, "system_fingerprint": FINGERPRINT}

    def chunk(index: int, text: str, finish_reason: str | None) -> bytes:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
        return sse(base | {"choices": [choice]})

    per_choice = [
        [chunk(i, piece, None) for piece in d.pieces] + [chunk(i, "", d.finish_reason)]
        for i, d in enumerate(drafts)
    ]
    events = interleave(per_choice)
    if include_usage(body):
        usage = _completion_usage(_prompts(body), drafts)
        events.append(sse(base | {"choices": [], "usage": usage}))
    events.append(DONE)
    return events
