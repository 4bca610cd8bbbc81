"""Captures become training examples, or rejections naming the first quality gate they fail."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.reassemble import normalize_chat_completion
from storage._example_checks import normalise
from storage.examples import REASONS, Example, Rejection, build_example
from storage.query import Curation, StoredCapture
from storage.sqlite import SQLiteStore
from tests.conftest import make_capture

SYSTEM: dict[str, Any] = {"role": "system", "content": "Be brief."}
USER: dict[str, Any] = {"role": "user", "content": "Say hello."}
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
    },
}
CALL: dict[str, Any] = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "lookup_order", "arguments": '{"order_id":"1234"}'},
}
SECRET = "zebra-quartz-7731"  # prompt text that must never reach a rejection detail


# -- factories ------------------------------------------------------------------------------------


def chat(
    messages: list[Any] | None = None,
    answer: dict[str, Any] | None = None,
    *,
    finish: str | None = "stop",
    request: dict[str, Any] | None = None,
    choices: list[Any] | None = None,
    **record: Any,
) -> Any:
    """A chat completion capture: raw (unstreamed) response shape unless ``response`` given."""
    body = {"model": "gpt-4o-mini", "messages": messages or [SYSTEM, USER], **(request or {})}
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "Hello there!",
        "refusal": None,
        "annotations": [],
    }
    if answer is not None:
        message = {"role": "assistant", "content": None, "refusal": None, **answer}
    if choices is None:
        choices = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
    response = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": choices,
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }
    fields: dict[str, Any] = {"request_body": json.dumps(body).encode(), "response": response}
    fields.update(record)
    return make_capture(**fields)


def responses(
    request: dict[str, Any],
    output: list[Any] | None,
    *,
    response_id: str = "resp_1",
    status: str = "completed",
    incomplete: str | None = None,
    **record: Any,
) -> Any:
    body = {"model": "gpt-4o-mini", **request}
    response = {
        "id": response_id,
        "object": "response",
        "status": status,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "model": "gpt-4o-mini-2024-07-18",
        "output": output,
        "previous_response_id": request.get("previous_response_id"),
    }
    fields: dict[str, Any] = {
        "endpoint": "responses",
        "path": "/v1/responses",
        "request_body": json.dumps(body).encode(),
        "response": response,
        "response_id": response_id,
        "previous_response_id": request.get("previous_response_id"),
    }
    fields.update(record)
    return make_capture(**fields)


def text_output(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_output(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": "fc_" + call_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def stored(record: Any, **curation: Any) -> StoredCapture:
    return StoredCapture(record, Curation(**curation))


def example(record: Any, chain: list[StoredCapture] | None = None, **curation: Any) -> Example:
    result = build_example(stored(record, **curation), chain)
    assert isinstance(result, Example), result
    return result


def rejected(record: Any, chain: list[StoredCapture] | None = None, **curation: Any) -> Rejection:
    result = build_example(stored(record, **curation), chain)
    assert isinstance(result, Rejection), result
    assert result.reason in REASONS
    assert result.capture_id == record.id
    assert SECRET not in result.detail and "\n" not in result.detail
    return result


# -- chat completions -----------------------------------------------------------------------------


def test_plain_chat_capture():
    record = chat()
    ex = example(record, feedback_score=0.5)
    assert ex.to_json() == {
        "messages": [SYSTEM, USER, {"role": "assistant", "content": "Hello there!"}]
    }
    assert ex.capture_id == record.id and ex.created_at == record.created_at
    assert ex.model == "gpt-4o-mini-2024-07-18"
    assert (ex.corrected, ex.original_answer, ex.feedback_score) == (False, None, 0.5)
    for key in (ex.content_hash, ex.prompt_hash, ex.near_key):
        assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert len({ex.content_hash, ex.prompt_hash, ex.near_key}) == 3


def test_model_falls_back_to_the_requested_one():
    assert example(chat(returned_model=None)).model == "gpt-4o-mini"


def test_streamed_and_plain_shapes_give_the_same_example():
    tool_answer = {"content": "", "tool_calls": [CALL]}
    for answer in (None, tool_answer):
        plain = chat(answer=answer, request={"tools": [TOOL]})
        streamed_response = normalize_chat_completion(copy.deepcopy(plain.response))
        if answer is not None:  # a stream of only tool calls has no content at all
            streamed_response["choices"][0]["message"]["content"] = None
        streamed = make_capture(
            request_body=plain.request_body, response=streamed_response, stream=True
        )
        a, b = example(plain), example(streamed)
        assert a.to_json() == b.to_json() and a.content_hash == b.content_hash


def test_tool_calls_and_tool_results_in_history_and_parallel_calls_in_the_answer():
    second = {
        "id": "call_2",
        "type": "function",
        "function": {"name": "lookup_order", "arguments": '{"order_id":"99"}'},
    }
    history = [
        SYSTEM,
        {"role": "user", "content": "Where are orders 1234 and 99?", "name": None},
        {"role": "assistant", "content": None, "tool_calls": [CALL], "refusal": None},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status":"shipped"}'},
    ]
    custom = {"type": "custom", "custom": {"name": "grammar"}}
    record = chat(
        history,
        {"tool_calls": [{**second, "id": "call_3"}, {**second, "id": "call_4"}]},
        finish="tool_calls",
        request={"tools": [TOOL, custom], "parallel_tool_calls": True, "tool_choice": "auto"},
    )
    ex = example(record)
    assert ex.to_json() == {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "Where are orders 1234 and 99?"},
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "content": '{"status":"shipped"}', "tool_call_id": "call_1"},
            {
                "role": "assistant",
                "tool_calls": [{**second, "id": "call_3"}, {**second, "id": "call_4"}],
            },
        ],
        "tools": [TOOL],
        "parallel_tool_calls": True,
    }


def test_roles_names_and_content_parts_are_kept_and_noise_dropped():
    messages = [
        {"role": "developer", "content": "Follow policy.", "name": "ops"},
        SYSTEM,
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?", "prompt_cache_breakpoint": {}},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
            ],
        },
        {"role": "assistant", "content": "A cat.", "refusal": "", "audio": None},
        {"role": "user", "content": "Sure?"},
    ]
    answer = {"content": "Yes.", "annotations": [{"type": "url_citation"}], "audio": None}
    ex = example(chat(messages, answer, request={"temperature": 0, "n": 1}))
    assert ex.messages == [
        {"role": "developer", "content": "Follow policy.", "name": "ops"},
        SYSTEM,
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
            ],
        },
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert ex.tools is None and ex.parallel_tool_calls is None


def test_n_greater_than_one_trains_on_choice_zero():
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": f"Answer {i}"},
            "finish_reason": "stop",
        }
        for i in (1, 0, 2)
    ]
    ex = example(chat(choices=choices, request={"n": 3}))
    assert ex.messages[-1] == {"role": "assistant", "content": "Answer 0"}


# -- the gates ------------------------------------------------------------------------------------

_PROMPT = [SYSTEM, {"role": "user", "content": f"My code is {SECRET}."}]


def _gate_cases() -> list[Any]:
    bad_args = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    array_args = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
    return [
        ("not_completed", chat(_PROMPT, outcome="upstream_error", status=None, response=None), {}),
        ("not_completed", chat(_PROMPT, outcome="client_disconnected"), {}),
        ("not_completed", chat(_PROMPT, status=500), {}),
        ("not_completed", chat(_PROMPT, response=None), {}),
        ("not_completed", chat(_PROMPT, finish=None, stream=True), {}),
        ("truncated", chat(_PROMPT, response_truncated=True), {}),
        ("unsupported_endpoint", chat(_PROMPT, endpoint="completions"), {}),
        ("unsupported_endpoint", chat(_PROMPT, endpoint="embeddings"), {}),
        ("excluded", chat(_PROMPT), {"excluded": True}),
        ("negative_feedback", chat(_PROMPT), {"feedback_score": -0.5}),
        ("refusal", chat(_PROMPT, {"refusal": f"No {SECRET}"}), {}),
        ("refusal", chat(_PROMPT, {"content": "x", "refusal": "I can't."}), {}),
        ("finish_length", chat(_PROMPT, finish="length"), {}),
        ("finish_content_filter", chat(_PROMPT, finish="content_filter"), {}),
        ("invalid_tool_arguments", chat(_PROMPT, {"tool_calls": [bad_args]}), {}),
        ("invalid_tool_arguments", chat(_PROMPT, {"tool_calls": [array_args]}), {}),
        ("no_answer", chat(_PROMPT, {"content": ""}), {}),
        ("no_answer", chat(_PROMPT, {"content": "  \n"}), {}),
        ("no_answer", chat(_PROMPT, {"content": None, "audio": {"id": "a"}}), {}),
        ("no_answer", chat(_PROMPT, choices=[]), {}),
        ("unparseable", chat(_PROMPT, request_body=SECRET.encode()), {}),
        ("unparseable", chat(_PROMPT, request_body=b"[1, 2]"), {}),
        ("unparseable", make_capture(request_body=b'{"model": "m"}'), {}),
    ]


@pytest.mark.parametrize(("reason", "record", "curation"), _gate_cases())
def test_each_gate_names_its_reason(reason, record, curation):
    assert rejected(record, **curation).reason == reason


def test_gate_details():
    assert rejected(chat(_PROMPT, finish="length")).detail == "finish_reason length"
    assert rejected(chat(_PROMPT, status=429)).detail == "status 429"
    bad = {"id": "c", "type": "function", "function": {"name": "lookup", "arguments": "{"}}
    detail = rejected(chat(_PROMPT, {"tool_calls": [bad]})).detail
    assert detail == "tool call 'lookup' arguments are not a JSON object"


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, "input_audio"),
        ({"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}, "'file'"),
        ({"role": "narrator", "content": "x"}, "unknown role"),
        ({"role": "function", "name": "f", "content": "x"}, "legacy"),
        ({"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}, "legacy"),
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "assistant", "tool_calls": [{"type": "custom", "custom": {}}]}, "custom"),
        ("just text", "not an object"),
    ],
)
def test_messages_with_no_training_form_are_unparseable(message, detail):
    rejection = rejected(chat([USER, message]))
    assert rejection.reason == "unparseable" and detail in rejection.detail


def test_legacy_functions_and_broken_answers_are_unparseable():
    assert rejected(chat(request={"functions": [{"name": "f"}]})).reason == "unparseable"
    record = chat(choices=[{"index": 0, "message": "hi", "finish_reason": "stop"}])
    assert rejected(record).reason == "unparseable"
    assert rejected(chat(choices=["x"])).reason == "unparseable"


def test_the_first_failing_gate_wins():
    assert rejected(chat(finish="length", response_truncated=True)).reason == "truncated"
    assert rejected(chat(finish="length"), excluded=True).reason == "excluded"
    assert rejected(chat(finish="length"), feedback_score=-1.0).reason == "negative_feedback"
    both = chat(answer={"refusal": "No."}, finish="length")
    assert rejected(both).reason == "refusal"
    # an unreadable request does not hide what is wrong with the answer
    assert rejected(chat(finish="length", request_body=b"{")).reason == "finish_length"
    assert rejected(chat(answer={"content": ""}, request_body=b"{")).reason == "no_answer"


def test_ignore_feedback_builds_the_rejected_side_of_a_pair():
    record = chat()
    assert rejected(record, feedback_score=-1.0).reason == "negative_feedback"
    result = build_example(stored(record, feedback_score=-1.0), ignore_feedback=True)
    assert isinstance(result, Example) and result.feedback_score == -1.0
    excluded = build_example(stored(record, excluded=True), ignore_feedback=True)
    assert isinstance(excluded, Rejection) and excluded.reason == "excluded"


# -- corrections ----------------------------------------------------------------------------------

_FIXED = {"role": "assistant", "content": "Fixed answer."}


@pytest.mark.parametrize(
    "correction",
    [
        {
            "id": "chatcmpl-fixed",
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {**_FIXED, "refusal": None}, "finish_reason": "stop"}
            ],
        },
        _FIXED,
        {"content": "Fixed answer."},
        {"object": "response", "status": "completed", "output": [text_output("Fixed answer.")]},
    ],
    ids=["chat.completion", "message", "content", "response"],
)
def test_a_correction_replaces_the_answer_in_each_accepted_shape(correction):
    record = chat(finish="length")  # the teacher's answer was cut; the correction fixes it
    ex = example(record, corrected_response=correction)
    assert ex.messages == [SYSTEM, USER, _FIXED]
    assert ex.corrected and ex.original_answer == {"role": "assistant", "content": "Hello there!"}
    plain = example(chat())
    assert ex.prompt_hash == plain.prompt_hash and ex.content_hash != plain.content_hash


def test_a_correction_fixes_a_refusal_and_keeps_it_as_the_original():
    teacher = chat(answer={"refusal": "I can't."})
    ex = example(teacher, corrected_response={"content": "Here you go."})
    assert ex.original_answer == {"role": "assistant", "refusal": "I can't."}


def test_the_answer_gates_judge_the_correction():
    bad = {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "nope"}}]}
    assert rejected(chat(), corrected_response=bad).reason == "invalid_tool_arguments"
    object_args = {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]}
    ex = example(chat(), corrected_response=object_args)
    assert ex.messages[-1]["tool_calls"][0]["function"]["arguments"] == '{"a":1}'
    cut = {"choices": [{"index": 0, "message": _FIXED, "finish_reason": "length"}]}
    assert rejected(chat(), corrected_response=cut).reason == "finish_length"
    assert rejected(chat(), corrected_response={"refusal": "No."}).reason == "refusal"
    assert rejected(chat(), corrected_response={"content": ""}).reason == "no_answer"
    assert rejected(chat(), corrected_response={"answer": "x"}).reason == "unparseable"
    assert rejected(chat(), corrected_response={"role": "user", "content": "x"}).reason == (
        "unparseable"
    )
    fmt = {"response_format": {"type": "json_object"}}
    assert rejected(chat(request=fmt), corrected_response=_FIXED).reason == "schema_violation"


def test_a_correction_rescues_an_unreadable_teacher_answer_but_not_a_failed_call():
    broken = chat(choices=[{"index": 0, "message": 7, "finish_reason": "stop"}])
    ex = example(broken, corrected_response=_FIXED)
    assert ex.messages[-1] == _FIXED and ex.original_answer is None
    assert rejected(chat(status=500), corrected_response=_FIXED).reason == "not_completed"


# -- structured outputs ---------------------------------------------------------------------------

_SCHEMA: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": ["hw", "sw"]}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize(
    ("response_format", "content", "ok"),
    [
        (_SCHEMA, '{"label": "hw"}', True),
        (_SCHEMA, '{"label": "other"}', False),
        (_SCHEMA, '{"label": "hw", "extra": 1}', False),
        (_SCHEMA, "hw", False),
        ({"type": "json_object"}, '{"anything": [1, 2]}', True),
        ({"type": "json_object"}, "[1, 2]", False),
        ({"type": "json_object"}, "Sure! {", False),
        ({"type": "text"}, "plain", True),
        ({"type": "json_schema", "json_schema": {"name": "n"}}, "[1]", True),  # no schema: JSON
        ({"type": "json_schema", "json_schema": {"name": "n"}}, "nope", False),
        # a schema that cannot be compiled (or a remote $ref, never fetched): only JSON is checked
        ({"type": "json_schema", "json_schema": {"schema": {"type": 12}}}, "{}", True),
        ({"type": "json_schema", "json_schema": {"schema": {"$ref": "https://x/s"}}}, "{}", True),
        ({"type": "json_schema", "json_schema": {"schema": {"type": 12}}}, "nope", False),
    ],
)
def test_response_format_gate(response_format, content, ok):
    record = chat(answer={"content": content}, request={"response_format": response_format})
    result = build_example(stored(record))
    if ok:
        assert isinstance(result, Example)
    else:
        assert isinstance(result, Rejection) and result.reason == "schema_violation", result


def test_response_format_does_not_bind_tool_calls():
    record = chat(
        answer={"tool_calls": [CALL]},
        request={"response_format": _SCHEMA, "tools": [TOOL]},
        finish="tool_calls",
    )
    assert example(record).messages[-1] == {"role": "assistant", "tool_calls": [CALL]}


def test_responses_text_format_is_checked():
    fmt = {k: v for k, v in _SCHEMA["json_schema"].items()} | {"type": "json_schema"}
    request = {"input": "Label it", "text": {"format": fmt}}
    assert isinstance(
        build_example(stored(responses(request, [text_output('{"label":"sw"}')]))), Example
    )
    bad = responses(request, [text_output('{"label":"x"}')])
    assert rejected(bad).reason == "schema_violation"
    json_mode = {"input": "x", "text": {"format": {"type": "json_object"}}}
    assert rejected(responses(json_mode, [text_output("no")])).reason == "schema_violation"


# -- Responses API --------------------------------------------------------------------------------


def test_responses_single_turn_with_instructions_and_tools():
    flat = {
        "type": "function",
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": TOOL["function"]["parameters"],
        "strict": None,
    }
    request = {
        "instructions": "You are terse.",
        "input": "Hello",
        "tools": [flat, {"type": "web_search_preview"}],
        "parallel_tool_calls": False,
    }
    output = [{"type": "reasoning", "id": "rs_1", "summary": []}, text_output("Hi!")]
    ex = example(responses(request, output))
    assert ex.to_json() == {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
        ],
        "tools": [TOOL],
        "parallel_tool_calls": False,
    }


def test_responses_function_call_items_become_tool_calls_and_tool_messages():
    request = {
        "input": [
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Q?"}]},
            {"type": "reasoning", "id": "rs_0", "summary": []},
            call_output("call_a", "lookup_order", '{"order_id":"1"}'),
            call_output("call_b", "lookup_order", '{"order_id":"2"}'),
            {"type": "function_call_output", "call_id": "call_a", "output": "shipped"},
            {
                "type": "function_call_output",
                "call_id": "call_b",
                "output": [{"type": "input_text", "text": "lost"}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "See"},
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64,AA",
                        "detail": "low",
                    },
                ],
            },
        ]
    }
    output = [
        text_output("Checking. "),
        call_output("call_c", "lookup_order", '{"order_id":"3"}'),
        call_output("call_d", "lookup_order", '{"order_id":"4"}'),
    ]
    ex = example(responses(request, output))

    def call(call_id: str, order: str) -> dict[str, Any]:
        arguments = json.dumps({"order_id": order}, separators=(",", ":"))
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": "lookup_order", "arguments": arguments},
        }

    assert ex.messages == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "tool_calls": [call("call_a", "1"), call("call_b", "2")]},
        {"role": "tool", "content": "shipped", "tool_call_id": "call_a"},
        {"role": "tool", "content": "lost", "tool_call_id": "call_b"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "See"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,AA", "detail": "low"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": "Checking. ",
            "tool_calls": [call("call_c", "3"), call("call_d", "4")],
        },
    ]


def test_responses_history_messages_and_easy_inputs():
    request = {
        "instructions": "",
        "input": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "I can't do "},
                    {"type": "output_text", "text": "that."},
                    {"type": "refusal", "refusal": "Refused."},
                ],
            },
            call_output("call_1", "lookup_order", '{"order_id":"1"}'),
            {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
            {"role": "user", "content": [{"type": "input_text", "text": "a"}] * 2},
        ],
    }
    ex = example(responses(request, [text_output("Done.")]))
    assert ex.messages[:-1] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {
            "role": "assistant",
            "content": "I can't do that.",
            "refusal": "Refused.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order_id":"1"}'},
                }
            ],
        },
        {"role": "tool", "content": "ok", "tool_call_id": "call_1"},
        {"role": "user", "content": [{"type": "text", "text": "a"}] * 2},
    ]


@pytest.mark.parametrize(
    ("request_", "detail"),
    [
        ({"instructions": ["x"], "input": "Hi"}, "instructions"),
        ({"input": 7}, "neither text nor a list"),
        ({"input": ["Hi"]}, "not an object"),
        ({"input": [{"role": "critic", "content": "x"}]}, "unknown role"),
        ({"input": [{"role": "user", "content": 5}]}, "neither text nor a list"),
        ({"input": [{"role": "assistant", "content": 5}]}, "neither text nor a list"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "without text"),
        ({"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}, "name"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "call_id"),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "image_url": "https://x/i.png"}],
                    }
                ]
            },
            "images",
        ),
    ],
)
def test_responses_inputs_with_no_chat_form(request_, detail):
    rejection = rejected(responses(request_, [text_output("x")]))
    assert rejection.reason == "unparseable" and detail in rejection.detail


def test_responses_outputs_with_no_chat_form():
    for output in (
        None,
        [{"type": "message", "role": "assistant"}],
        [{"type": "message", "content": [{"type": "audio"}]}],
    ):
        assert rejected(responses({"input": "Hi"}, output)).reason == "unparseable"


def _chain() -> list[StoredCapture]:
    first = responses(
        {"instructions": "Old instructions.", "input": "Hi"},
        [text_output("Hello!")],
        response_id="resp_a",
    )
    second = responses(
        {"input": "Look up 7", "previous_response_id": "resp_a", "instructions": "Be kind."},
        [call_output("call_7", "lookup_order", '{"order_id":"7"}')],
        response_id="resp_b",
    )
    third = responses(
        {
            "input": [{"type": "function_call_output", "call_id": "call_7", "output": "late"}],
            "previous_response_id": "resp_b",
            "instructions": "Be terse.",
        },
        [text_output("Order 7 is late.")],
        response_id="resp_c",
    )
    return [stored(first), stored(second), stored(third)]


def test_a_three_capture_chain_is_rebuilt_oldest_first():
    chain = _chain()
    result = build_example(chain[-1], chain)
    assert isinstance(result, Example)
    assert result.messages == [
        {"role": "system", "content": "Be terse."},  # only the capture's own instructions
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Look up 7"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order_id":"7"}'},
                }
            ],
        },
        {"role": "tool", "content": "late", "tool_call_id": "call_7"},
        {"role": "assistant", "content": "Order 7 is late."},
    ]
    middle = build_example(chain[1], chain[:2])
    assert isinstance(middle, Example)
    assert middle.messages[0] == {"role": "system", "content": "Be kind."}
    assert middle.messages[1:4] == result.messages[1:4] and len(middle.messages) == 5
    first = build_example(chain[0], None)  # no previous_response_id: no chain needed
    assert isinstance(first, Example) and len(first.messages) == 3


def test_incomplete_chains_are_rejected():
    chain = _chain()
    last = chain[-1].record
    cut = stored(dataclasses.replace(chain[0].record, response_truncated=True))
    for case in (
        None,
        [],
        chain[1:],  # starts at a capture that continues another
        [chain[0], chain[2]],  # a missing link
        chain[:2],  # does not end with the capture
        [stored(make_capture(response_id="resp_a")), *chain[1:]],  # a chat capture
        [cut, *chain[1:]],  # an earlier response that is not whole
    ):
        assert rejected(last, case).reason == "incomplete_chain", case


def test_earlier_turns_are_history_and_not_gated():
    chain = _chain()
    excluded = [stored(chain[0].record, excluded=True, feedback_score=-1.0), *chain[1:]]
    result = build_example(chain[-1], excluded)
    assert isinstance(result, Example) and len(result.messages) == 7


@pytest.mark.parametrize(
    ("status", "incomplete", "reason"),
    [
        ("incomplete", "max_output_tokens", "finish_length"),
        ("incomplete", "content_filter", "finish_content_filter"),
        ("incomplete", None, "not_completed"),
        ("failed", None, "not_completed"),
        ("cancelled", None, "not_completed"),
        ("in_progress", None, "not_completed"),
    ],
)
def test_responses_statuses(status, incomplete, reason):
    record = responses({"input": "Hi"}, [text_output("Hel")], status=status, incomplete=incomplete)
    assert rejected(record).reason == reason


@pytest.mark.parametrize(
    ("request_", "output", "reason"),
    [
        (
            {"input": "Hi"},
            [{"type": "web_search_call", "id": "ws", "status": "completed"}],
            "unparseable",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, [text_output("x")], "unparseable"),
        ({"input": "Hi", "conversation": "conv_1"}, [text_output("x")], "unparseable"),
        ({"prompt": {"id": "pmpt_1"}}, [text_output("x")], "unparseable"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            [text_output("x")],
            "unparseable",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            [text_output("x")],
            "unparseable",
        ),
        ({"input": "Hi"}, [], "no_answer"),
        ({"input": "Hi"}, [{"type": "reasoning", "id": "rs", "summary": []}], "no_answer"),
        (
            {"input": "Hi"},
            [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "refusal", "refusal": "No"}],
                }
            ],
            "refusal",
        ),
        ({"input": "Hi"}, [call_output("c", "f", "not json")], "invalid_tool_arguments"),
    ],
)
def test_responses_gates(request_, output, reason):
    assert rejected(responses(request_, output)).reason == reason


# -- determinism and keys -------------------------------------------------------------------------


def test_the_same_capture_always_gives_the_same_example():
    record = chat(request={"tools": [TOOL], "parallel_tool_calls": False})
    a, b = example(record), example(record)
    assert a == b and json.dumps(a.to_json()) == json.dumps(b.to_json())
    # key order in the request changes none of the keys (canonical JSON sorts them)
    body = json.loads(record.request_body)
    reordered = json.dumps(_reverse_keys(body)).encode()
    c = example(dataclasses.replace(record, request_body=reordered))
    assert c.to_json() == a.to_json()  # tools stay as given, so only their key order differs
    assert (c.content_hash, c.prompt_hash, c.near_key) == (
        a.content_hash,
        a.prompt_hash,
        a.near_key,
    )


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reverse_keys(value[key]) for key in reversed(value)}
    if isinstance(value, list):
        return [_reverse_keys(item) for item in value]
    return value


def test_hash_keys():
    base = example(chat([SYSTEM, {"role": "user", "content": "Order 1234 is late, said Ann."}]))
    near = example(
        chat(
            [
                {"role": "system", "content": "be   BRIEF."},
                {"role": "user", "content": " order 9 is\nLATE,  said ann. "},
            ],
            {"content": "Something else."},
        )
    )
    other = example(chat([SYSTEM, {"role": "user", "content": "Order 1234 is early, said Ann."}]))
    assert near.near_key == base.near_key
    # worked out on first use, never carried over to a changed copy
    assert dataclasses.replace(base, messages=other.messages).near_key == other.near_key
    assert near.prompt_hash != base.prompt_hash and near.content_hash != base.content_hash
    assert other.near_key != base.near_key
    role = example(chat([{"role": "user", "content": "Be brief."}, USER]))
    assert role.near_key != example(chat()).near_key  # roles count
    tools = example(chat(request={"tools": [TOOL]}))
    assert tools.prompt_hash != example(chat()).prompt_hash
    assert tools.near_key == example(chat()).near_key  # text only
    answer = example(chat(answer={"content": "Hi!"}))
    assert answer.prompt_hash == example(chat()).prompt_hash
    assert answer.content_hash != example(chat()).content_hash


def test_near_key_counts_tool_calls_and_refusals_in_the_history():
    def history(arguments: str, refusal: str) -> list[dict[str, Any]]:
        call = {**CALL, "function": {"name": "lookup_order", "arguments": arguments}}
        return [
            USER,
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"},
            {"role": "assistant", "content": "x", "refusal": refusal},
            USER,
        ]

    base = example(chat(history('{"id": 1}', "No."))).near_key
    assert example(chat(history('{"ID":  22}', "no."))).near_key == base
    assert example(chat(history('{"key": 1}', "No."))).near_key != base
    assert example(chat(history('{"id": 1}', "Nope."))).near_key != base


def test_chat_content_forms():
    parts = [
        {"type": "image_url", "image_url": "https://x/a.png"},  # a bare URL, as some clients send
        {"type": "refusal", "refusal": "no"},
    ]
    ex = example(chat([{"role": "user", "content": parts}]))
    assert ex.messages[0]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
        {"type": "refusal", "refusal": "no"},
    ]
    answer = example(chat(answer={"content": [{"type": "text", "text": "Hi"}]}))
    assert answer.messages[-1] == {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}
    for bad in (
        [{"type": "text"}],
        [{"type": "refusal"}],
        [{"type": "image_url", "image_url": {}}],
        7,
    ):
        assert rejected(chat([{"role": "user", "content": bad}])).reason == "unparseable"
    for calls in (
        "x",
        ["x"],
        [{"type": "function", "function": {"name": "f", "arguments": 5}}],
    ):
        assert rejected(chat(answer={"tool_calls": calls})).reason == "unparseable"
    no_args = {"function": {"name": "f", "arguments": None}}
    assert rejected(chat(answer={"tool_calls": [no_args]})).reason == "invalid_tool_arguments"


def _sha(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


@pytest.mark.parametrize(
    "record",
    [
        chat(),
        chat(request={"tools": [TOOL], "parallel_tool_calls": False}),
        chat(request={"parallel_tool_calls": True}),
        responses({"input": []}, [text_output("Hi")]),  # an empty prompt
    ],
)
def test_hashes_are_the_sha256_of_the_canonical_json(record):
    ex = example(record)
    body = ex.to_json()
    assert ex.content_hash == _sha(body)
    assert ex.prompt_hash == _sha(body | {"messages": body["messages"][:-1]})


_TEXT = st.text(alphabet=st.sampled_from("aZ09 \t\n\r\x0b\x0c\x1c\x1f\x85\u00a0\u0660É.-"))


@given(st.one_of(_TEXT, st.text()))
def test_normalise_has_one_meaning_for_ascii_and_other_text(text):
    expected = " ".join(re.sub(r"\d+", "0", text.lower()).split()).encode()
    assert normalise(text) == expected


# -- real captures through the proxy and `stillroom mock` -----------------------------------------


def _sdk(base: str) -> Any:
    import openai

    return openai.OpenAI(base_url=base + "/v1", api_key="sk-examples", max_retries=0)


def _load(db, capture_ids: list[str]) -> list[tuple[StoredCapture, list[StoredCapture] | None]]:
    async def read() -> list[tuple[StoredCapture, list[StoredCapture] | None]]:
        async with SQLiteStore(str(db)) as store:
            out = []
            for capture_id in capture_ids:
                for _ in range(250):
                    found = await store.get_capture(capture_id)
                    if found is not None:
                        break
                    await asyncio.sleep(0.02)
                assert found is not None, capture_id
                chain = None
                if found.record.previous_response_id is not None:
                    conversation = await store.conversation(capture_id)
                    assert conversation is not None and conversation.complete
                    chain = conversation.captures
                out.append((found, chain))
            return out

    return asyncio.run(read())


@pytest.fixture
def captured(start_proxy, mock_url, tmp_path):
    db = tmp_path / "captures.db"
    with start_proxy(upstream=mock_url, database=str(db), flush_interval=0.02) as base:
        yield base, db


def test_real_chat_captures(captured):
    base, db = captured
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    tools = [TOOL, {**TOOL, "function": {**TOOL["function"], "name": "get_time"}}]
    ids = []
    with _sdk(base) as client:
        for extra in ({}, {"tools": tools}):
            plain = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, **extra
            )
            streamed = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, stream=True, **extra
            )
            list(streamed.parse())
            ids += [
                plain.headers["x-stillroom-capture-id"],
                streamed.headers["x-stillroom-capture-id"],
            ]
    built = [example(capture.record, chain) for capture, chain in _load(db, ids)]
    text_plain, text_streamed, tool_plain, tool_streamed = built
    assert text_plain.to_json() == text_streamed.to_json()
    assert text_plain.messages[:2] == messages
    assert set(text_plain.messages[-1]) == {"role", "content"}
    assert tool_plain.to_json() == tool_streamed.to_json()
    answer = tool_plain.messages[-1]
    assert set(answer) == {"role", "tool_calls"} and len(answer["tool_calls"]) == 2
    for call in answer["tool_calls"]:
        assert set(call) == {"id", "type", "function"}
        assert isinstance(json.loads(call["function"]["arguments"]), dict)
    assert tool_plain.tools == tools


def test_real_responses_captures(captured):
    base, db = captured
    flat = {
        "type": "function",
        "name": "lookup_order",
        "parameters": TOOL["function"]["parameters"],
    }
    with _sdk(base) as client:
        first = client.responses.with_raw_response.create(
            model="gpt-4o-mini", instructions="Be brief.", input="Where is order 7?", tools=[flat]
        )
        called = first.parse()
        call = next(item for item in called.output if item.type == "function_call")
        second = client.responses.with_raw_response.create(
            model="gpt-4o-mini",
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "late"}],
            previous_response_id=called.id,
            tools=[flat],
            stream=True,
        )
        list(second.parse())
    ids = [r.headers["x-stillroom-capture-id"] for r in (first, second)]
    (one, _), (two, chain) = _load(db, ids)
    assert chain is not None
    a = build_example(one)
    assert isinstance(a, Example)
    assert a.messages[:2] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is order 7?"},
    ]
    assert a.messages[-1]["tool_calls"][0]["id"] == call.call_id
    assert a.tools == [
        {"type": "function", "function": {k: v for k, v in flat.items() if k != "type"}}
    ]
    b = build_example(two, chain)
    assert isinstance(b, Example), b
    assert len(chain) == 2 and chain[-1].record.id == two.record.id
    # the first call's instructions are not carried over the chain
    assert b.messages[:2] == a.messages[1:]
    assert b.messages[2] == {"role": "tool", "content": "late", "tool_call_id": call.call_id}
    assert len(b.messages) == 4 and set(b.messages[-1]) == {"role", "content"}
    assert rejected(two.record, None).reason == "incomplete_chain"
