"""From a capture to a training example, or to the reason it cannot be one (the quality gates).

``build_example(stored, chain)`` turns one stored capture (with its curation) into an
``Example``: an OpenAI chat conversation whose last message is the answer to train on, or a
``Rejection`` naming the first gate it failed. Pure and deterministic: the same capture and
curation always give the same example, byte for byte once serialised (``Example.to_json``),
because dataset snapshots keep only capture ids and per-example content hashes and exports
rebuild the examples.

Conversion (``../shared/reference/openai-api.md`` §3.9, §6.9):

* chat completions: ``messages`` = the request's messages + the chosen answer message
  (choice 0); ``tools`` (function tools only) and ``parallel_tool_calls`` from the request;
  fields with no training meaning are dropped (``logprobs``, ``annotations``, ``audio``,
  ``name: null``…). Roles are kept as sent (``developer`` stays ``developer``; the OpenAI
  exporter maps it to ``system``). Message cleaning: ``storage._example_messages``.
* Responses API: ``instructions`` → a leading system message, input items → messages
  (``function_call`` → assistant ``tool_calls``, ``function_call_output`` → ``tool``), the output
  → the answer; a ``previous_response_id`` chain is rebuilt from ``chain`` (oldest first, the
  capture itself last); an incomplete chain is rejected (``incomplete_chain``). Details:
  ``storage._example_responses``.
* legacy completions and embeddings are rejected (``unsupported_endpoint``).
* a corrected answer stored by an operator replaces the teacher's (``corrected=True``; the
  teacher's stays in ``original_answer`` for preference pairs).

Gates, in this order; the first that fails names the ``Rejection`` (``REASONS``):
``not_teacher`` (the proxy's own eval, judge or shadow traffic, tagged ``stillroom.source``, or
an answer a student gave through a route, ``stillroom.served_by: student:…``),
``not_completed`` (outcome other than completed, or status not 2xx), ``truncated``,
``unsupported_endpoint``, ``incomplete_chain``, ``excluded`` (marked by an operator),
``negative_feedback`` (score < 0), ``refusal``, ``finish_length``, ``finish_content_filter``,
``invalid_tool_arguments`` (a tool call's arguments are not a JSON object text),
``schema_violation`` (the answer breaks the request's ``response_format`` JSON schema, or is not
JSON under ``json_object``), ``no_answer`` (no assistant content and no tool calls),
``unparseable`` (request or response is not the JSON expected). The token gate
(``too_long``) and duplicates (``duplicate``, ``near_duplicate``) are applied by the dataset
builder, which sees all examples.

The finer rules:

* ``not_completed`` also covers a response object with nothing to train on: no response, a
  streamed chat answer whose choice 0 never got a ``finish_reason`` (the stream stopped early),
  and a Responses ``status`` of ``failed``, ``cancelled``, ``queued``, ``in_progress``, or
  ``incomplete`` for a reason other than ``max_output_tokens`` (→ ``finish_length``) or
  ``content_filter`` (→ ``finish_content_filter``).
* ``n`` > 1: choice 0 is the answer; the other choices are not used.
* ``invalid_tool_arguments`` checks the answer's tool calls only: the history is what the app
  sent and the API accepted.
* ``response_format`` (chat) or ``text.format`` (Responses) binds the answer's content; an
  answer that is only tool calls is not checked.
* ``unparseable`` is reported only when no other gate fails: a request that cannot be read does
  not hide a refusal or a ``length`` finish in the answer.
* A refusal is kept in the cleaned message (``refusal``), so ``original_answer`` shows what the
  teacher did; an accepted answer never has one.
* ``chain`` is needed only for a Responses capture with ``previous_response_id``; it must run
  from a capture without one to ``stored``, each link continuing the one before, every earlier
  capture with a whole (not truncated) response. Earlier turns are history: no other gate
  applies to them.

Corrections (``Curation.corrected_response``) may take any of these shapes:

* a chat completion ``{"choices": [{"message": {...}, "finish_reason": ...}], ...}`` (choice 0);
* a Responses object ``{"output": [...], "status"?: ...}``;
* an assistant message ``{"role": "assistant", "content": ..., "tool_calls"?: [...]}``, or just
  ``{"content": "..."}``.

Anything else is ``unparseable``. The answer gates (refusal, finish, tool arguments, schema,
no answer) then judge the correction instead of the teacher's answer, which they no longer
concern; a correction carries a finish only in the first two shapes. Gates about the exchange
itself (``not_completed`` … ``negative_feedback``) still apply.

Keys (hex sha256): ``content_hash`` of the canonical JSON (orjson, sorted keys) of
``to_json()``; ``prompt_hash`` of the same with the answer left out, so the key order of a
request changes neither; ``near_key`` of the prompt's roles and text (content, refusals,
tool-call names and arguments) lowercased, digit runs as ``0`` and whitespace runs as one
space (``storage._example_checks.near_key``), worked out on first read.

Cost: about 12 µs for a chat capture with a 2 KB request and a 1 KB answer (on a small
2-vCPU machine), and about as much again the first time ``near_key`` is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from storage._example_checks import (
    check_format,
    check_tool_arguments,
    example_hashes,
    near_key,
)
from storage._example_messages import (
    Message,
    Unusable,
    answer_text,
    chat_answer,
    chat_prompt,
    clean_answer,
    first_choice,
)
from storage._example_responses import (
    responses_answer,
    responses_format,
    responses_prompt,
    responses_tools,
)
from storage.models import CaptureRecord
from storage.query import StoredCapture

SOURCE_TAG = "stillroom.source"  # eval, judge or shadow: the proxy's own traffic
SERVED_BY_TAG = "stillroom.served_by"  # teacher, or student:<route> when a route answered

REASONS: tuple[str, ...] = (
    "not_teacher",
    "not_completed",
    "truncated",
    "unsupported_endpoint",
    "incomplete_chain",
    "excluded",
    "negative_feedback",
    "refusal",
    "finish_length",
    "finish_content_filter",
    "invalid_tool_arguments",
    "schema_violation",
    "no_answer",
    "unparseable",
    # applied by the dataset builder (storage.datasets)
    "too_long",
    "duplicate",
    "near_duplicate",
    "leakage",
)

_CHAT = "chat/completions"
_RESPONSES = "responses"
_Finish = tuple[str, str] | None  # (reason, detail) of a finish gate the answer fails
_CHAT_FINISH: dict[object, tuple[str, str]] = {
    "length": ("finish_length", "finish_reason length"),
    "content_filter": ("finish_content_filter", "finish_reason content_filter"),
}
_INCOMPLETE: dict[object, tuple[str, str]] = {
    "max_output_tokens": ("finish_length", "incomplete: max_output_tokens"),
    "content_filter": ("finish_content_filter", "incomplete: content_filter"),
}
_UNFINISHED = frozenset({"failed", "cancelled", "queued", "in_progress"})


@dataclass(frozen=True, slots=True)
class Example:
    """One training example built from one capture."""

    capture_id: str
    created_at: float
    model: str | None  # the teacher model that answered (returned, else requested)
    # The conversation; the last message is the answer (role "assistant"). Earlier assistant
    # messages are history the app sent.
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None  # chat function tools, {"type": "function", "function"}
    parallel_tool_calls: bool | None
    corrected: bool  # the answer is an operator's correction
    original_answer: dict[str, Any] | None  # the teacher's answer when corrected, else None
    feedback_score: float | None
    # Keys for the dataset builder (hex digests, stable across versions of Stillroom):
    content_hash: str  # of messages + tools + parallel_tool_calls: exact duplicates
    prompt_hash: str  # of everything but the answer: splits, leakage, preference pairs
    # near_key (below) is of the prompt normalised (case, whitespace, digits): near duplicates.
    # It costs as much as the rest of the example together and only near-duplicate dedupe
    # reads it, so it is worked out on first use and kept here.
    _near_key: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def near_key(self) -> str:
        key = self._near_key
        if key is None:
            key = near_key(self.messages[:-1])
            object.__setattr__(self, "_near_key", key)  # a cache of a pure function
        return key

    def to_json(self) -> dict[str, Any]:
        """``{"messages", "tools", "parallel_tool_calls"}`` (no None values): canonical form."""
        return {"messages": self.messages, **_extras(self.tools, self.parallel_tool_calls)}


@dataclass(frozen=True, slots=True)
class Rejection:
    capture_id: str
    reason: str  # one of REASONS
    detail: str  # one short line for reports (never prompt text)


def build_example(
    stored: StoredCapture,
    chain: list[StoredCapture] | None = None,
    *,
    ignore_feedback: bool = False,
) -> Example | Rejection:
    """The example for ``stored``; ``chain`` is its Responses API conversation, oldest first
    ending with ``stored`` (None: not a Responses capture, or no chain needed).

    ``ignore_feedback`` skips the ``negative_feedback`` gate (the rejected side of a
    preference pair is built from a capture with negative feedback).
    """
    record = stored.record
    try:
        _check_exchange(stored, chain, ignore_feedback)
        return _build(stored, chain)
    except Unusable as exc:
        return Rejection(record.id, exc.reason, exc.detail)


def _extras(tools: list[Message] | None, parallel: bool | None) -> dict[str, Any]:
    """The example's keys besides ``messages``, None values left out."""
    extras: dict[str, Any] = {}
    if tools is not None:
        extras["tools"] = tools
    if parallel is not None:
        extras["parallel_tool_calls"] = parallel
    return extras


# -- the gates about the exchange ----------------------------------------------------------------


def _check_exchange(
    stored: StoredCapture, chain: list[StoredCapture] | None, ignore_feedback: bool
) -> None:
    record = stored.record
    source = record.tags.get(SOURCE_TAG)
    if source is not None:
        raise Unusable("not_teacher", f"the proxy's own {source} traffic")
    if record.tags.get(SERVED_BY_TAG, "teacher") != "teacher":
        raise Unusable("not_teacher", "answered by a student, not the teacher")
    problem = _completion_problem(record)
    if problem is not None:
        raise Unusable("not_completed", problem)
    if record.response_truncated:
        raise Unusable("truncated", "the response was cut at the capture size limit")
    if record.endpoint not in (_CHAT, _RESPONSES):
        raise Unusable("unsupported_endpoint", f"endpoint {record.endpoint!r:.40}")
    if record.endpoint == _RESPONSES and record.previous_response_id is not None:
        problem = _chain_problem(record, chain)
        if problem is not None:
            raise Unusable("incomplete_chain", problem)
    curation = stored.curation
    if curation.excluded:
        raise Unusable("excluded", "marked excluded by an operator")
    score = curation.feedback_score
    if not ignore_feedback and score is not None and score < 0:
        raise Unusable("negative_feedback", f"feedback score {score:g}")


def _completion_problem(record: CaptureRecord) -> str | None:
    if record.outcome != "completed":
        return f"outcome {record.outcome}"
    if record.status is None or not 200 <= record.status < 300:
        return f"status {record.status}"
    response = record.response
    if not isinstance(response, dict):
        return "no response object"
    if record.endpoint == _CHAT and record.stream:
        choice = first_choice(response.get("choices"))
        if choice is not None and choice.get("finish_reason") is None:
            return "the stream ended without a finish_reason"
    elif record.endpoint == _RESPONSES:
        status = response.get("status")
        if status in _UNFINISHED:
            return f"response status {status}"
        if status == "incomplete" and _incomplete_reason(response) not in _INCOMPLETE:
            return "response status incomplete"
    return None


def _incomplete_reason(response: Message) -> object:
    details = response.get("incomplete_details")
    return details.get("reason") if isinstance(details, dict) else None


def _chain_problem(record: CaptureRecord, chain: list[StoredCapture] | None) -> str | None:
    if not chain:
        return "no conversation given for previous_response_id"
    if chain[-1].record.id != record.id:
        return "the conversation does not end with this capture"
    if chain[0].record.previous_response_id is not None:
        return "the start of the conversation was not captured"
    for turn, (before, after) in enumerate(zip(chain, chain[1:], strict=False), 1):
        if after.record.previous_response_id != before.record.response_id:
            return f"the conversation is broken before turn {turn + 1}"
        earlier = before.record
        if earlier.endpoint != _RESPONSES or not isinstance(earlier.response, dict):
            return f"turn {turn} has no Responses API response"
        if earlier.response_truncated:
            return f"turn {turn} response was cut at the capture size limit"
    return None


# -- the answer, the prompt and the answer gates ---------------------------------------------------


def _build(stored: StoredCapture, chain: list[StoredCapture] | None) -> Example:
    record = stored.record
    response = record.response or {}
    is_chat = record.endpoint == _CHAT
    unparseable: list[Unusable] = []  # reported only when no other gate fails

    teacher: Message | None = None
    finish: _Finish = None
    try:
        teacher, finish = _chat_answer(response) if is_chat else _responses_answer(response)
    except Unusable as exc:
        unparseable.append(exc)
    answer, original = teacher, None
    correction = stored.curation.corrected_response
    if correction is not None:
        unparseable.clear()  # the teacher's answer is no longer trained on
        original, answer, finish = teacher, None, None
        try:
            answer, finish = _corrected(correction)
        except Unusable as exc:
            unparseable.append(exc)

    if answer is not None:
        if answer.get("refusal"):
            raise Unusable("refusal", "the answer is a refusal")
        if finish is not None:
            raise Unusable(*finish)
        check_tool_arguments(answer)

    prompt: list[Message] | None = None
    tools: list[Message] | None = None
    parallel: bool | None = None
    try:
        request = _load_request(record.request_body, "the request")
        if is_chat:
            prompt, tools, response_format = chat_prompt(request)
        else:
            history = [_turn(earlier.record) for earlier in (chain or [])[:-1]]
            prompt = responses_prompt(request, history if record.previous_response_id else [])
            tools = responses_tools(request.get("tools"))
            response_format = responses_format(request)
        value = request.get("parallel_tool_calls")
        parallel = value if isinstance(value, bool) else None
    except Unusable as exc:
        unparseable.append(exc)
    else:
        if answer is not None:
            check_format(answer, response_format)

    if answer is not None and not _has_answer(answer):
        raise Unusable("no_answer", "the answer has no content and no tool calls")
    if unparseable or answer is None or prompt is None:
        raise unparseable[0]
    content_hash, prompt_hash = example_hashes(prompt, answer, _extras(tools, parallel))
    return Example(
        capture_id=record.id,
        created_at=record.created_at,
        model=record.returned_model or record.requested_model,
        messages=[*prompt, answer],
        tools=tools,
        parallel_tool_calls=parallel,
        corrected=correction is not None,
        original_answer=original if correction is not None else None,
        feedback_score=stored.curation.feedback_score,
        content_hash=content_hash,
        prompt_hash=prompt_hash,
    )


def _load_request(body: bytes, what: str) -> Message:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Unusable("unparseable", f"{what} body is not JSON") from None
    if not isinstance(request, dict):
        raise Unusable("unparseable", f"{what} body is not a JSON object")
    return request


def _turn(record: CaptureRecord) -> tuple[Message, Message]:
    request = _load_request(record.request_body, "an earlier turn's request")
    return request, record.response or {}


def _chat_answer(response: Message, where: str = "the response") -> tuple[Message, _Finish]:
    answer, finish_reason = chat_answer(response, where)
    return answer, _CHAT_FINISH.get(finish_reason)


def _responses_answer(response: Message) -> tuple[Message, _Finish]:
    finish = None
    if response.get("status") == "incomplete":
        finish = _INCOMPLETE.get(_incomplete_reason(response))
    return responses_answer(response), finish


def _corrected(correction: Message) -> tuple[Message, _Finish]:
    if "choices" in correction:
        if not correction["choices"]:
            raise Unusable("unparseable", "corrected_response has no choice 0")
        return _chat_answer(correction, "corrected_response")
    if isinstance(correction.get("output"), list):
        return _responses_answer(correction)
    if any(key in correction for key in ("content", "tool_calls", "refusal")):
        return clean_answer(correction, "corrected_response"), None
    raise Unusable("unparseable", "corrected_response is not an accepted shape")


def _has_answer(answer: Message) -> bool:
    if answer.get("tool_calls"):
        return True
    content = answer.get("content")
    if isinstance(content, list) and any(part["type"] == "image_url" for part in content):
        return True
    text = answer_text(answer)
    return text is not None and not text.isspace() and text != ""
