"""proxy._reassemble_responses (through reassemble_response): terminal events and the fallback."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.reassemble import ReassemblyResult, reassemble_response
from proxy.sse import SSEEvent


def events(*items: Any) -> list[SSEEvent]:
    return [
        SSEEvent(item if isinstance(item, str) else orjson.dumps(item).decode()) for item in items
    ]


def response_event(kind: str, **payload: Any) -> SSEEvent:
    return SSEEvent(orjson.dumps({"type": kind, **payload}).decode(), kind)


SNAPSHOT: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "status": "in_progress",
    "output": [],
    "usage": None,
}


def test_responses_error_event() -> None:
    spec_shape = response_event(
        "error", code="server_error", message="boom", param=None, sequence_number=3
    )
    result = reassemble_response([spec_shape])
    assert result == ReassemblyResult(
        None, False, False, {"code": "server_error", "message": "boom", "param": None}
    )
    nested = SSEEvent('{"error": {"message": "nested"}}', "message")
    assert reassemble_response([nested]).error == {"message": "nested"}
    assert reassemble_response([SSEEvent('{"error": "plain"}')]).error == {"message": "plain"}


def test_responses_terminal_without_output_is_rebuilt() -> None:
    item = {"id": "msg_1", "type": "message", "content": [{"type": "output_text", "text": "Hi"}]}
    result = reassemble_response(
        [
            response_event("response.created", response=SNAPSHOT),
            response_event(
                "response.output_item.added", output_index=0, item={**item, "content": []}
            ),
            response_event("response.output_item.done", output_index=0, item=item),
            response_event(
                "response.incomplete", response={**SNAPSHOT, "status": "incomplete", "output": None}
            ),
        ]
    )
    assert (result.done, result.complete) == (True, False)
    assert result.response is not None
    assert result.response["output"] == [item]
    assert result.response["status"] == "incomplete"


def test_responses_fallback_builds_items_from_deltas() -> None:
    def at(kind: str, index: int, **payload: Any) -> SSEEvent:
        return response_event(kind, output_index=index, item_id=f"item_{index}", **payload)

    result = reassemble_response(
        [
            response_event("response.in_progress", response=SNAPSHOT),
            response_event("response.created", response="junk"),
            # 0: message whose added event was lost; text, refusal and an annotation
            at("response.output_text.delta", 0, content_index=0, delta="Hel"),
            at("response.output_text.delta", 0, content_index=0, delta="lo"),
            at("response.output_text.delta", 0, content_index=0, delta=None),
            at(
                "response.output_text.annotation.added",
                0,
                content_index=0,
                annotation={"type": "url_citation"},
            ),
            at("response.output_text.annotation.added", 0, content_index=0, annotation=None),
            at("response.output_text.annotation.added", 0, content_index=0, annotation={"n": 2}),
            at("response.output_text.annotation.added", 0, annotation={"type": "no content_index"}),
            at("response.refusal.delta", 0, content_index=1, delta="No"),
            at("response.refusal.done", 0, content_index=1, refusal="No."),
            at("response.refusal.done", 0, content_index=1, refusal=None),
            # 1: reasoning with a summary part
            at(
                "response.output_item.added",
                1,
                item={"id": "rs_1", "type": "reasoning", "summary": []},
            ),
            at(
                "response.reasoning_summary_part.added",
                1,
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            ),
            at("response.reasoning_summary_text.delta", 1, summary_index=0, delta="Plan"),
            at(
                "response.reasoning_summary_part.added",
                1,
                summary_index=5,
                part={"type": "summary_text", "text": "x"},
            ),
            at("response.reasoning_summary_part.added", 1, summary_index=None, part={}),
            # 2: function call, arguments replaced by their .done
            at(
                "response.output_item.added",
                2,
                item={"id": "fc_1", "type": "function_call", "arguments": ""},
            ),
            at("response.function_call_arguments.delta", 2, delta='{"a"'),
            at("response.function_call_arguments.done", 2, arguments='{"a":1}'),
            # 3: finished, so later deltas are ignored
            at(
                "response.output_item.done",
                3,
                item={"id": "ct_1", "type": "custom_tool_call", "input": "ok"},
            ),
            at("response.custom_tool_call_input.delta", 3, delta="ignored"),
            # 4: message with an existing part list
            at(
                "response.output_item.added",
                4,
                item={
                    "id": "msg_4",
                    "type": "message",
                    "content": [{"type": "output_text", "text": "old"}],
                },
            ),
            at(
                "response.content_part.added",
                4,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": "junk"},
            ),
            at("response.output_text.delta", 4, content_index=0, delta="new"),
            at("response.output_text.annotation.added", 4, content_index=0, annotation={"i": 0}),
            # ignored: unknown types and suffixes, bad indexes
            at("response.web_search_call.searching", 5),
            at("response.output_text.weird", 0, content_index=0, delta="x"),
            response_event("response.output_text.delta", output_index="0", delta="x"),
            response_event("response.output_item.added", output_index=6, item="junk"),
            SSEEvent('{"delta": "no type"}', "response.function_call_arguments.delta"),
            SSEEvent("[DONE]"),
            at("response.completed", 0, response=SNAPSHOT),
        ]
    )
    assert (result.done, result.complete, result.error) == (False, False, None)
    assert result.response is not None
    assert result.response["status"] == "incomplete"
    assert result.response["output"] == [
        {
            "id": "item_0",
            "type": "message",
            "content": [
                {
                    "type": "output_text",
                    "text": "Hello",
                    "annotations": [{"type": "url_citation"}, {"n": 2}],
                },
                {"type": "refusal", "refusal": "No."},
            ],
        },
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [
                {"type": "summary_text", "text": "Plan"},
                {"type": "summary_text", "text": "x"},
            ],
        },
        {"id": "fc_1", "type": "function_call", "arguments": '{"a":1}'},
        {"id": "ct_1", "type": "custom_tool_call", "input": "ok"},
        {
            "id": "msg_4",
            "type": "message",
            "content": [{"type": "output_text", "text": "new", "annotations": [{"i": 0}]}],
        },
    ]


def test_responses_fallback_without_a_snapshot() -> None:
    result = reassemble_response(
        [response_event("response.function_call_arguments.delta", output_index=0, delta="{}")]
    )
    assert result.response == {
        "object": "response",
        "status": "incomplete",
        "output": [{"id": None, "type": "function_call", "arguments": "{}"}],
    }


def test_responses_failed_keeps_the_first_error() -> None:
    failed = {**SNAPSHOT, "status": "failed", "error": {"code": "server_error", "message": "late"}}
    result = reassemble_response(
        [
            response_event("error", code="rate_limit_exceeded", message="early", param=None),
            response_event("response.failed", response=failed),
        ]
    )
    assert result.error == {"code": "rate_limit_exceeded", "message": "early", "param": None}
    assert (result.done, result.complete) == (True, False)
    assert reassemble_response(
        events({"type": "response.failed", "response": {**failed, "error": "x"}})
    ).error == {"message": "x"}


def test_responses_empty_stream() -> None:
    assert reassemble_response([]) == ReassemblyResult(None)
    assert reassemble_response(events("junk")) == ReassemblyResult(None, parse_errors=1)
