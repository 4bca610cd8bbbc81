"""proxy.reassemble: the golden corpus at every split, the normal form, fold rules, properties."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.reassemble import (
    ReassemblyResult,
    extract_usage,
    normalize_chat_completion,
    normalize_completion,
    reassemble,
    reassemble_chat_completion,
    reassemble_completion,
)
from proxy.sse import SSEEvent
from storage.models import Usage
from tests._sse_fixtures import (
    FAST,
    FIXTURES,
    SLOW,
    Fixture,
    decode,
    fixture_params,
    load_fixture,
    one_byte_at_a_time,
    skip_unless_slow_selected,
    split_at,
)

# --- the golden corpus ---------------------------------------------------------------------------


@cache
def _reassemble_cached(endpoint: str, events: tuple[SSEEvent, ...]) -> ReassemblyResult:
    return reassemble(endpoint, events)


def outcome(fixture: Fixture, pieces: list[bytes], *, memo: bool = False) -> dict[str, Any]:
    """Decode ``pieces``, reassemble, and describe the result in the ``.expected.json`` shape."""
    events, pending = decode(pieces)
    fold = _reassemble_cached if memo else reassemble
    result = fold(fixture.endpoint, tuple(events))
    return {
        "endpoint": fixture.endpoint,
        "done": result.done,
        "complete": result.complete,
        "error": result.error,
        "parse_errors": result.parse_errors,
        "pending": pending,
        "response": result.response,
    }


@pytest.mark.parametrize("fixture", fixture_params())
def test_fixture_reassembles_to_the_expected_object(fixture: Fixture) -> None:
    assert outcome(fixture, [fixture.raw]) == fixture.expected
    assert outcome(fixture, one_byte_at_a_time(fixture.raw)) == fixture.expected


@pytest.mark.parametrize("fixture", fixture_params())
def test_fixture_reassembles_the_same_at_every_split(fixture: Fixture) -> None:
    """Two pieces, cut at every offset. The fold is pure, so it is memoised on the events."""
    for offset in range(len(fixture.raw) + 1):
        pieces = [fixture.raw[:offset], fixture.raw[offset:]]
        assert outcome(fixture, pieces, memo=True) == fixture.expected, offset


@pytest.mark.slow
@pytest.mark.parametrize("fixture", fixture_params())
def test_fixture_reassembles_the_same_at_every_split_unmemoised(pytestconfig, fixture) -> None:
    skip_unless_slow_selected(pytestconfig)
    for offset in range(len(fixture.raw) + 1):
        pieces = [fixture.raw[:offset], fixture.raw[offset:]]
        assert outcome(fixture, pieces) == fixture.expected, offset


NORMALIZE = {"chat/completions": normalize_chat_completion, "completions": normalize_completion}


@pytest.mark.parametrize("fixture", fixture_params())
def test_reassembled_objects_are_in_normal_form(fixture: Fixture) -> None:
    response = fixture.expected["response"]
    if fixture.endpoint in NORMALIZE:
        assert NORMALIZE[fixture.endpoint](response) == response


@pytest.mark.parametrize(
    "name", sorted(path.stem for path in FIXTURES.glob("*.json") if ".expected" not in path.name)
)
def test_streamed_and_non_streamed_captures_compare_equal(name: str) -> None:
    fixture = load_fixture(name)
    body = json.loads(FIXTURES.joinpath(f"{name}.json").read_text())
    normalized = NORMALIZE[fixture.endpoint](body)
    assert normalized == outcome(fixture, [fixture.raw])["response"]


# --- helpers for hand-written streams ------------------------------------------------------------


def events(*items: Any, event: str = "message") -> list[SSEEvent]:
    """Each item becomes one event: dicts and lists as JSON, strings as they are."""
    return [
        SSEEvent(item if isinstance(item, str) else orjson.dumps(item).decode(), event)
        for item in items
    ]


def chunk(*choices: Any, **top: Any) -> dict[str, Any]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return {**base, **top, "choices": list(choices)}


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": None, "finish_reason": finish}


def message_of(result: ReassemblyResult, choice: int = 0) -> dict[str, Any]:
    assert result.response is not None
    message: dict[str, Any] = result.response["choices"][choice]["message"]
    return message


# --- chat completions ----------------------------------------------------------------------------


def test_tool_calls_merge_by_index_when_interleaved() -> None:
    # reference §2.9: fragments of two calls interleaved
    first = {"name": "get_weather", "arguments": ""}
    result = reassemble_chat_completion(
        events(
            chunk(
                delta(
                    role="assistant",
                    content=None,
                    tool_calls=[
                        {"index": 0, "id": "call_A", "type": "function", "function": first}
                    ],
                )
            ),
            chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city":'}}])),
            chunk(
                delta(
                    tool_calls=[
                        {
                            "index": 1,
                            "id": "call_B",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        }
                    ]
                )
            ),
            chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}])),
            chunk(delta(tool_calls=[{"index": 1, "function": {"arguments": "{}"}}])),
            chunk(delta(finish="tool_calls")),
            "[DONE]",
        )
    )
    assert result.complete
    assert message_of(result) == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_A",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "call_B",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            },
        ],
    }


def test_later_index_may_arrive_first() -> None:
    result = reassemble_chat_completion(
        events(
            chunk(delta(tool_calls=[{"index": 1, "id": "call_B", "function": {"name": "b"}}])),
            chunk(delta(tool_calls=[{"index": 0, "id": "call_A", "function": {"name": "a"}}])),
        )
    )
    assert [call["id"] for call in message_of(result)["tool_calls"]] == ["call_A", "call_B"]


def test_identity_fields_keep_their_first_value() -> None:
    # Some compatible servers repeat id, type and the full name on every fragment.
    frag = {"index": 0, "id": "call_A", "type": "function", "function": {"name": "f"}}
    result = reassemble_chat_completion(
        events(
            chunk(
                delta(
                    role="assistant",
                    tool_calls=[{**frag, "function": {"name": "f", "arguments": "{"}}],
                )
            ),
            chunk(
                delta(
                    role="assistant",
                    tool_calls=[{**frag, "function": {"name": "f", "arguments": "}"}}],
                )
            ),
        )
    )
    assert message_of(result)["tool_calls"] == [
        {"id": "call_A", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]


def test_an_empty_identity_value_is_filled_later() -> None:
    result = reassemble_chat_completion(
        events(
            chunk(
                delta(
                    tool_calls=[{"index": 0, "id": "", "function": {"name": "", "arguments": ""}}]
                )
            ),
            chunk(delta(tool_calls=[{"index": 0, "id": "call_A", "function": {"name": "f"}}])),
        )
    )
    assert message_of(result)["tool_calls"] == [
        {"id": "call_A", "type": "function", "function": {"name": "f", "arguments": ""}}
    ]


def test_tool_calls_without_index() -> None:
    # Servers that omit `index`: a new id opens a slot, a repeated id or no id continues one.
    result = reassemble_chat_completion(
        events(
            chunk(delta(tool_calls=[{"function": {"arguments": "{"}}])),
            chunk(
                delta(tool_calls=[{"id": "call_A", "function": {"name": "a", "arguments": "}"}}])
            ),
            chunk(
                delta(tool_calls=[{"id": "call_B", "function": {"name": "b", "arguments": "["}}])
            ),
            chunk(delta(tool_calls=[{"function": {"arguments": "]"}}, "junk"])),
            chunk(delta(tool_calls=[{"id": "call_A", "function": {"arguments": " "}}])),
        )
    )
    assert [(c["id"], c["function"]["arguments"]) for c in message_of(result)["tool_calls"]] == [
        ("call_A", "{} "),
        ("call_B", "[]"),
    ]


def test_delta_fields_fold_by_type() -> None:
    result = reassemble_chat_completion(
        events(
            chunk(
                delta(
                    role="assistant",
                    content="",
                    reasoning_content="Think",
                    annotations=[{"a": 1}],
                    audio={"id": "audio_1", "transcript": "He", "expires_at": 1},
                    extra=[1],
                    tool_calls="not a list",
                )
            ),
            chunk(
                delta(
                    role="ignored",
                    content="Hi",
                    reasoning_content="ing",
                    annotations=[{"a": 2}],
                    audio={"id": "audio_1", "transcript": "llo", "expires_at": 2},
                    extra=[2],
                    flag=True,
                )
            ),
            chunk(delta(flag=False, extra={"now": "a dict"}, custom={"x": 1})),
            chunk(delta(custom={"x": 2}), unknown_top="kept", obfuscation="dropped"),
        )
    )
    assert message_of(result) == {
        "role": "assistant",
        "content": "Hi",
        "refusal": None,
        "reasoning_content": "Thinking",
        "annotations": [{"a": 1}, {"a": 2}],
        "audio": {"id": "audio_1", "transcript": "Hello", "expires_at": 2},
        "extra": {"now": "a dict"},
        "flag": False,
        "custom": {"x": 2},
    }
    assert result.response is not None
    assert result.response["unknown_top"] == "kept"
    assert "obfuscation" not in result.response


def test_legacy_function_call_and_custom_tool_calls() -> None:
    result = reassemble_chat_completion(
        events(
            chunk(delta(function_call={"name": "f", "arguments": ""})),
            chunk(delta(function_call={"arguments": '{"a":1}'})),
            chunk(
                delta(
                    tool_calls=[
                        {
                            "index": 0,
                            "id": "call_C",
                            "type": "custom",
                            "custom": {"name": "grep", "input": "fo"},
                        }
                    ]
                )
            ),
            chunk(delta(tool_calls=[{"index": 0, "custom": {"input": "o"}}])),
        )
    )
    message = message_of(result)
    assert message["function_call"] == {"name": "f", "arguments": '{"a":1}'}
    assert message["tool_calls"] == [
        {"id": "call_C", "type": "custom", "custom": {"name": "grep", "input": "foo"}}
    ]


def test_refusal_and_logprobs() -> None:
    token = {"token": "No", "logprob": -0.1, "bytes": [78, 111], "top_logprobs": []}
    result = reassemble_chat_completion(
        events(
            chunk(
                {
                    "index": 0,
                    "delta": {"role": "assistant", "refusal": ""},
                    "logprobs": {"refusal": []},
                }
            ),
            chunk(
                {
                    "index": 0,
                    "delta": {"refusal": "No"},
                    "logprobs": {"refusal": [token], "content": None},
                }
            ),
            chunk({"index": 0, "delta": {"refusal": "."}, "logprobs": {"refusal": [token]}}),
            chunk({"index": 0, "delta": {}, "logprobs": "junk", "finish_reason": "stop"}),
        )
    )
    assert result.response is not None
    choice = result.response["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": None, "refusal": "No."}
    assert choice["logprobs"] == {"content": None, "refusal": [token, token]}
    assert choice["finish_reason"] == "stop"


def test_choices_are_keyed_by_index_and_unknown_choice_fields_kept() -> None:
    result = reassemble_chat_completion(
        events(
            chunk({"delta": {"content": "no index"}, "content_filter_results": {"hate": 1}}),
            chunk({"index": 2, "delta": {"content": "two"}, "stop_reason": None}),
            chunk({"index": "1", "delta": "junk", "content_filter_results": {"hate": 0}}, "junk"),
            chunk({"index": 2, "delta": {}, "finish_reason": "length", "stop_reason": 42}),
            chunk({"index": 2, "message": {"content": "a stray full message is not merged"}}),
        )
    )
    assert result.response is not None
    assert result.response["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "no index", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
            "content_filter_results": {"hate": 0},
        },
        {
            "index": 2,
            "message": {"role": "assistant", "content": "two", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": 42,
        },
    ]


def test_azure_style_prompt_filter_chunk() -> None:
    # Azure opens with an empty-id chunk that has no choices but prompt_filter_results.
    result = reassemble_chat_completion(
        events(
            {
                "id": "",
                "object": "",
                "created": 0,
                "model": "",
                "choices": [],
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
            },
            chunk(
                delta(role="assistant", content="Hi"), id="chatcmpl-9", created=5, model="gpt-4o"
            ),
            chunk(delta(finish="stop"), id="chatcmpl-9", created=5, model="gpt-4o"),
            "[DONE]",
        )
    )
    assert result.response is not None
    assert (result.response["id"], result.response["created"], result.response["model"]) == (
        "chatcmpl-9",
        5,
        "gpt-4o",
    )
    assert result.response["object"] == "chat.completion"
    assert result.response["prompt_filter_results"][0]["prompt_index"] == 0
    assert result.complete


def test_done_ends_the_stream() -> None:
    result = reassemble_chat_completion(
        events(chunk(delta(content="a", finish="stop")), "[DONE]", chunk(delta(content="b")))
    )
    assert (result.done, result.complete, message_of(result)["content"]) == (True, True, "a")


def test_parse_errors_are_counted_and_skipped() -> None:
    result = reassemble_chat_completion(
        events(
            "{not json",
            "[1, 2]",
            "42",
            '"text"',
            "",
            " \n ",
            {"choices": 1},
            chunk(delta(content="ok")),
        )
    )
    assert result.parse_errors == 4
    assert message_of(result)["content"] == "ok"
    assert not result.done


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (
            events({"error": {"message": "boom", "type": "server_error"}}),
            {"message": "boom", "type": "server_error"},
        ),
        (events({"error": "Internal error"}), {"message": "Internal error"}),
        (events({"message": "overloaded"}, event="error"), {"message": "overloaded"}),
        (
            events({"error": {"message": "first"}}, {"error": {"message": "second"}}),
            {"message": "first"},
        ),
    ],
)
def test_in_stream_errors(stream: list[SSEEvent], error: dict[str, Any]) -> None:
    result = reassemble_chat_completion([*events(chunk(delta(content="a"))), *stream])
    assert result.error == error
    assert message_of(result)["content"] == "a"
    assert not result.complete


def test_error_only_stream_has_no_response() -> None:
    result = reassemble_chat_completion(events({"error": {"message": "rate limited"}}))
    assert result == ReassemblyResult(None, False, False, {"message": "rate limited"}, 0)


def test_empty_streams() -> None:
    assert reassemble_chat_completion([]) == ReassemblyResult(None)
    assert reassemble_chat_completion(events("[DONE]")) == ReassemblyResult(None, done=True)
    usage_only = reassemble_chat_completion(events(chunk(usage={"prompt_tokens": 1}), "[DONE]"))
    assert usage_only.response is not None and usage_only.response["choices"] == []
    assert not usage_only.complete  # no choice at all


def test_content_is_null_without_fragments_and_empty_with_empty_ones() -> None:
    assert (
        message_of(reassemble_chat_completion(events(chunk(delta(role="assistant")))))["content"]
        is None
    )
    assert message_of(reassemble_chat_completion(events(chunk(delta(content="")))))["content"] == ""


def test_absurdly_deep_deltas_do_not_exhaust_the_stack() -> None:
    deep = '{"x":' * 900 + "1" + "}" * 900
    data = '{"choices":[{"index":0,"delta":{"deep":%s,"tool_calls":[{"index":0,"f":%s}]}}]}'
    stream = [SSEEvent(data % (deep, deep)), SSEEvent(data % (deep, deep))]
    message = message_of(reassemble_chat_completion(stream))
    assert set(message) == {"role", "content", "refusal", "deep", "tool_calls"}


# --- normal form of non-streamed bodies ----------------------------------------------------------


def test_normalize_chat_completion() -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "stop_reason": None,
                "message": {
                    "content": None,
                    "annotations": [],
                    "audio": None,
                    "function_call": None,
                    "tool_calls": [
                        {"index": 0, "id": "call_A", "function": {"name": "f", "arguments": "{}"}},
                        "junk",
                    ],
                },
            },
            {"index": 1, "message": "junk", "logprobs": {"content": []}},
            "junk",
        ],
        "usage": None,
        "system_fingerprint": None,
        "service_tier": "default",
        "obfuscation": "x",
        "prompt_filter_results": [],
    }
    expected = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "logprobs": None,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_A",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        },
                        "junk",
                    ],
                },
            },
            {
                "index": 1,
                "finish_reason": None,
                "logprobs": {"content": [], "refusal": None},
                "message": {"role": "assistant", "content": None, "refusal": None},
            },
            "junk",
        ],
        "service_tier": "default",
    }
    assert normalize_chat_completion(body) == expected
    assert normalize_chat_completion(expected) == expected


def test_normalize_keeps_what_it_cannot_read() -> None:
    assert normalize_chat_completion({"choices": "junk", "x": 1}) == {
        "object": "chat.completion",
        "choices": "junk",
        "x": 1,
    }
    assert normalize_completion({"choices": [{"index": 0, "text": None}]}) == {
        "object": "text_completion",
        "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": None}],
    }


# --- legacy completions --------------------------------------------------------------------------


def test_completion_text_and_logprobs_concatenate_per_choice() -> None:
    def part(index: int, text: Any, finish: str | None = None) -> dict[str, Any]:
        lp = {"tokens": [text], "token_logprobs": [-0.5], "text_offset": [0]}
        return {
            "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish}]
        }

    result = reassemble_completion(
        events(part(1, "b"), part(0, "a"), part(0, "c", "length"), part(1, 7, "stop"), "[DONE]")
    )
    assert result.complete
    assert result.response is not None
    choices = result.response["choices"]
    assert [(c["index"], c["text"], c["finish_reason"]) for c in choices] == [
        (0, "ac", "length"),
        (1, "b", "stop"),
    ]
    assert choices[0]["logprobs"]["tokens"] == ["a", "c"]


# --- dispatch and usage --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "object_name"),
    [
        ("chat/completions", "chat.completion"),
        ("/v1/chat/completions", "chat.completion"),
        ("v1/completions/", "text_completion"),
        ("responses", "response"),
    ],
)
def test_dispatch_by_endpoint(endpoint: str, object_name: str) -> None:
    completed = {"type": "response.completed", "response": {"object": "response", "output": []}}
    stream = events({**completed, "choices": [{"text": ""}]})
    result = reassemble(endpoint, stream)
    assert result.response is not None
    assert result.response["object"] == object_name


def test_dispatch_refuses_other_endpoints() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        reassemble("embeddings", [])


CHAT_USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 4},
}
RESPONSES_USAGE = {
    "input_tokens": 36,
    "input_tokens_details": {"cached_tokens": 5},
    "output_tokens": 87,
    "output_tokens_details": {"reasoning_tokens": 6},
    "total_tokens": 123,
}


@pytest.mark.parametrize(
    ("endpoint", "usage", "expected"),
    [
        ("chat/completions", CHAT_USAGE, Usage(19, 10, 29, 3, 4)),
        (
            "completions",
            {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            Usage(5, 7, 12),
        ),
        ("embeddings", {"prompt_tokens": 8, "total_tokens": 8}, Usage(8, None, 8)),
        ("responses", RESPONSES_USAGE, Usage(36, 87, 123, 5, 6)),
        ("/v1/responses", CHAT_USAGE, Usage(19, 10, 29, 3, 4)),  # the other naming
        ("chat/completions", RESPONSES_USAGE, Usage(36, 87, 123, 5, 6)),
        ("chat/completions", {"prompt_tokens": 2, "completion_tokens": 3}, Usage(2, 3, 5)),
        (
            "chat/completions",
            {
                "prompt_tokens": True,
                "completion_tokens": "3",
                "total_tokens": 1.0,
                "prompt_tokens_details": None,
            },
            Usage(),
        ),
        ("chat/completions", "junk", Usage()),
        ("chat/completions", None, Usage()),
    ],
)
def test_extract_usage(endpoint: str, usage: Any, expected: Usage) -> None:
    assert extract_usage(endpoint, {"usage": usage}) == expected


def test_extract_usage_without_an_object() -> None:
    assert extract_usage("chat/completions", None) == Usage()
    assert extract_usage("responses", {}) == Usage()


def test_extract_usage_from_the_corpus() -> None:
    def usage_of(name: str) -> Usage:
        fixture = load_fixture(name)
        return extract_usage(fixture.endpoint, fixture.expected["response"])

    assert usage_of("chat_usage") == Usage(23, 14, 37, 0, 0)
    assert usage_of("chat_text") == Usage()
    assert usage_of("responses_text") == Usage(37, 11, 48, 0, 0)
    assert usage_of("completions_legacy") == Usage(5, 7, 12)


# --- properties (reliability.md T17) -------------------------------------------------------------

fragment = st.text(st.characters(codec="utf-8"), max_size=6)


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: tuple[str, ...]


@dataclass(frozen=True)
class ChoicePlan:
    content: tuple[str, ...]
    calls: tuple[Call, ...]


calls = st.lists(
    st.builds(
        Call,
        st.uuids().map(lambda u: f"call_{u.hex[:24]}"),
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
        st.lists(fragment, max_size=6).map(tuple),
    ),
    max_size=3,
    unique_by=lambda call: call.id,
).map(tuple)
plans = st.lists(
    st.builds(ChoicePlan, st.lists(fragment, max_size=6).map(tuple), calls), min_size=1, max_size=2
)
usages: st.SearchStrategy[dict[str, Any] | None] = st.none() | st.fixed_dictionaries(
    {
        "prompt_tokens": st.integers(0, 10**7),
        "completion_tokens": st.integers(0, 10**7),
        "prompt_tokens_details": st.fixed_dictionaries({"cached_tokens": st.integers(0, 10**6)}),
        "completion_tokens_details": st.fixed_dictionaries(
            {"reasoning_tokens": st.integers(0, 10**6)}
        ),
    }
)


@st.composite
def chat_streams(draw: st.DrawFn) -> tuple[list[ChoicePlan], dict[str, Any] | None, bytes]:
    """Chat chunks for each plan, choices and parallel calls interleaved, serialised as SSE
    with random line ends and keep-alive comments."""
    choice_plans = draw(plans)
    usage = draw(usages)
    queues: list[list[dict[str, Any]]] = []
    for index, plan in enumerate(choice_plans):
        first = [delta(index, role="assistant")]
        text = [delta(index, content=piece) for piece in plan.content]
        # fragments of parallel calls interleave; each call's own order is kept
        owners = draw(
            st.permutations(
                [i for i, call in enumerate(plan.calls) for _ in range(len(call.arguments) + 1)]
            )
        )
        seen: dict[int, int] = {}
        tools = []
        for owner in owners:
            call, n = plan.calls[owner], seen.get(owner, 0)
            seen[owner] = n + 1
            entry: dict[str, Any] = {"index": owner, "function": {}}
            if n == 0:
                entry.update(
                    id=call.id, type="function", function={"name": call.name, "arguments": ""}
                )
            else:
                entry["function"]["arguments"] = call.arguments[n - 1]
            tools.append(delta(index, tool_calls=[entry]))
        queues.append(first + text + tools + [delta(index, finish="stop")])
    order = draw(st.permutations([i for i, queue in enumerate(queues) for _ in queue]))
    chunks = [chunk(queues[i].pop(0)) for i in order]
    if usage is not None:
        chunks.append(
            chunk(
                usage={**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
            )
        )
    n = len(chunks) + 1
    ends = draw(st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=n, max_size=n))
    comments = draw(
        st.lists(st.sampled_from([b"", b": keep-alive\n\n", b":\r"]), min_size=n, max_size=n)
    )
    raw = b"".join(
        comment + b"data: " + orjson.dumps(c) + end + end
        for c, end, comment in zip([*chunks, "[DONE]"], ends, comments, strict=True)
    )
    raw = raw.replace(b'data: "[DONE]"', b"data: [DONE]")
    return choice_plans, usage, raw


def check_chat_stream(
    case: tuple[list[ChoicePlan], dict[str, Any] | None, bytes], cuts: list[int]
) -> None:
    choice_plans, usage, raw = case
    events_, pending = decode(split_at(raw, [cut % (len(raw) + 1) for cut in cuts]))
    result = reassemble_chat_completion(events_)
    assert (result.done, result.complete, result.parse_errors, pending) == (True, True, 0, False)
    assert result.response is not None
    for plan, choice in zip(choice_plans, result.response["choices"], strict=True):
        message = choice["message"]
        assert message["content"] == ("".join(plan.content) if plan.content else None)
        assert message.get("tool_calls", []) == [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": "".join(c.arguments)},
            }
            for c in plan.calls
        ]
    if usage is None:
        assert extract_usage("chat/completions", result.response) == Usage()
    else:
        assert extract_usage("chat/completions", result.response) == Usage(
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["prompt_tokens"] + usage["completion_tokens"],
            usage["prompt_tokens_details"]["cached_tokens"],
            usage["completion_tokens_details"]["reasoning_tokens"],
        )


offsets = st.lists(st.integers(0, 100_000), max_size=6)


@FAST
@given(chat_streams(), offsets)
def test_chat_stream_properties(case, cuts) -> None:
    check_chat_stream(case, cuts)


@pytest.mark.slow
@pytest.mark.timeout(900)
@SLOW
@given(chat_streams(), offsets)
def test_chat_stream_properties_slow(pytestconfig, case, cuts) -> None:
    skip_unless_slow_selected(pytestconfig)
    check_chat_stream(case, cuts)


JSON_KEYS = "choices delta index tool_calls function arguments content logprobs usage error type"
JSON_KEYS += " response output output_index item part content_index summary_index text id name"
json_keys = st.sampled_from(JSON_KEYS.split()) | st.text(max_size=2)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=4)
json_values = st.recursive(
    json_scalars | st.sampled_from(["[DONE]", "function", "response.completed"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=8,
)
chat_like = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "index": st.integers(0, 2) | json_values,
                    "delta": st.dictionaries(json_keys, json_values, max_size=4),
                    "text": json_values,
                    "logprobs": json_values,
                    "finish_reason": json_values,
                },
            ),
            max_size=2,
        ),
        "usage": json_values,
        "error": json_values,
        "id": json_scalars,
    },
)
response_types = st.sampled_from(
    [
        "response.created",
        "response.completed",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_text.annotation.added",
        "response.function_call_arguments.delta",
        "error",
    ]
)
response_like = st.fixed_dictionaries(
    {"type": response_types},
    optional={
        key: st.integers(0, 2) | json_values if key.endswith("index") else json_values
        for key in ["output_index", "content_index", "item", "part", "delta", "response"]
    },
)
garbage_events = st.lists(
    st.builds(
        SSEEvent,
        st.one_of(chat_like, response_like, json_values).map(lambda v: orjson.dumps(v).decode())
        | st.text(max_size=8),
        st.sampled_from(["message", "error"]) | response_types,
    ),
    max_size=8,
)


def check_never_raises(stream: list[SSEEvent]) -> None:
    for endpoint in ("chat/completions", "completions", "responses"):
        result = reassemble(endpoint, stream)
        assert result.response is None or isinstance(result.response, dict)
        assert result.error is None or isinstance(result.error, dict)
        if endpoint != "responses" and result.response is not None:
            normalize = (
                normalize_chat_completion
                if endpoint == "chat/completions"
                else normalize_completion
            )
            assert normalize(result.response) == result.response


@FAST
@given(garbage_events)
def test_garbage_never_raises(stream: list[SSEEvent]) -> None:
    check_never_raises(stream)


@pytest.mark.slow
@pytest.mark.timeout(900)
@SLOW
@given(garbage_events)
def test_garbage_never_raises_slow(pytestconfig, stream: list[SSEEvent]) -> None:
    skip_unless_slow_selected(pytestconfig)
    check_never_raises(stream)
