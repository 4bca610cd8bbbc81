"""storage.validate: OpenAI's cookbook checks plus today's format, each error class by a line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from storage.validate import MAX_LISTED, Problem, validate_jsonl

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
GOOD: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": None, "tool_calls": [CALL], "weight": 0},
        {"role": "tool", "tool_call_id": "call_1", "content": "1"},
        {"role": "assistant", "content": "Done.", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "parallel_tool_calls": False,
}
GOOD_DPO: dict[str, Any] = {
    "input": {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]},
    "preferred_output": [{"role": "assistant", "content": "Good."}],
    "non_preferred_output": [{"role": "assistant", "content": "Bad."}],
}


def lines(*rows: object, fill: object = GOOD, total: int = 10) -> list[bytes]:
    """The rows, then copies of ``fill`` up to ``total`` lines (so the 10-example rule holds)."""
    out = [r if isinstance(r, bytes) else orjson.dumps(r) + b"\n" for r in rows]
    return out + [orjson.dumps(fill) + b"\n"] * (total - len(out))


def errors_of(row: object, fmt: str = "openai-chat") -> dict[str, int]:
    fill = GOOD if fmt == "openai-chat" else GOOD_DPO
    report = validate_jsonl(lines(row, fill=fill), fmt=fmt)
    assert all(p.line == 1 for p in report.problems), report.problems
    return dict(report.error_counts)


def with_message(index: int, **changes: Any) -> dict[str, Any]:
    messages = [dict(m) for m in GOOD["messages"]]
    messages[index].update(changes)
    for key, value in changes.items():
        if value is ...:
            del messages[index][key]
    return {**GOOD, "messages": messages}


def test_a_good_file_passes(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"".join(lines()))
    report = validate_jsonl(path)
    assert report.ok and report.examples == 10 and report.invalid_lines == 0
    assert report.to_json() == {
        "format": "openai-chat",
        "ok": True,
        "examples": 10,
        "invalid_lines": 0,
        "errors": {},
        "warnings": {},
        "problems": [],
        "problems_truncated": False,
        "tokens": None,
    }
    assert validate_jsonl(str(path)).ok
    assert validate_jsonl([line.decode() for line in lines()]).ok


@pytest.mark.parametrize(
    ("row", "key"),
    [
        # the cookbook's classes
        (b"[1, 2]\n", "data_type"),
        ({"messages": []}, "missing_messages_list"),
        ({"tools": []}, "missing_messages_list"),
        (with_message(1, role=...), "message_missing_key"),
        (with_message(1, content=...), "message_missing_key"),
        (with_message(1, role="robot"), "unrecognized_role"),
        (with_message(0, role="developer"), "unrecognized_role"),
        (with_message(1, mood="happy"), "message_unrecognized_key"),
        (with_message(3, name="x"), "message_unrecognized_key"),
        (with_message(1, content=""), "missing_content"),
        (with_message(1, content=[]), "missing_content"),
        (with_message(1, content=7), "missing_content"),
        (with_message(4, content=None), "missing_content"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "example_missing_assistant_message"),
        # today's format
        (b"{not json\n", "invalid_json"),
        (b"\n", "invalid_json"),
        (b"\xff\xfe\n", "invalid_json"),
        ({**GOOD, "metadata": {}}, "unrecognized_key"),
        (with_message(3, tool_call_id="call_9"), "unknown_tool_call_id"),
        (with_message(3, tool_call_id=...), "message_missing_key"),
        (
            with_message(2, tool_calls=[{**CALL, "function": {"name": "f", "arguments": "{"}}]),
            "invalid_tool_arguments",
        ),
        (
            with_message(2, tool_calls=[{**CALL, "function": {"name": "f", "arguments": {}}}]),
            "tool_arguments_not_string",
        ),
        (with_message(2, tool_calls={"id": "x"}), "invalid_tool_calls"),
        (with_message(2, tool_calls=["x"]), "invalid_tool_calls"),
        (with_message(2, tool_calls=[{**CALL, "id": ""}]), "invalid_tool_calls"),
        (with_message(2, tool_calls=[{**CALL, "type": "custom"}]), "invalid_tool_calls"),
        (
            with_message(2, tool_calls=[{**CALL, "function": {"arguments": "{}"}}]),
            "invalid_tool_calls",
        ),
        (with_message(2, function_call={"name": "f", "arguments": "{"}), "invalid_tool_arguments"),
        (
            with_message(1, content=[{"type": "input_audio", "input_audio": {}}]),
            "unsupported_content_part",
        ),
        (with_message(1, content=[{"type": "file", "file": {}}]), "unsupported_content_part"),
        (with_message(1, content=[{"type": "video"}]), "unsupported_content_part"),
        (
            with_message(4, content=[{"type": "image_url", "image_url": {"url": "u"}}]),
            "unsupported_content_part",
        ),
        (with_message(1, content=["text"]), "invalid_content_part"),
        (with_message(1, content=[{"type": "text"}]), "invalid_content_part"),
        (with_message(1, content=[{"type": "image_url", "image_url": {}}]), "invalid_content_part"),
        (with_message(4, content=[{"type": "refusal"}]), "invalid_content_part"),
        (with_message(4, weight=2), "invalid_weight"),
        (with_message(4, weight=True), "invalid_weight"),
        (with_message(1, weight=1), "invalid_weight"),
        (with_message(4, weight=0), "no_trained_assistant_message"),
        ({**GOOD, "tools": [{"type": "code_interpreter"}]}, "invalid_tools"),
        ({**GOOD, "tools": {"f": 1}}, "invalid_tools"),
        ({**GOOD, "parallel_tool_calls": "yes"}, "invalid_parallel_tool_calls"),
    ],
)
def test_each_error_class(row: object, key: str) -> None:
    assert key in errors_of(row)


def test_messages_that_are_valid_today() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]},
            {"role": "assistant", "content": None, "refusal": "I can't."},
            {"role": "user", "content": "Please?", "name": "ann"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
            {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "function", "name": "f", "content": "1"},
            {"role": "assistant", "content": "A cat."},
        ]
    }
    report = validate_jsonl(lines(row))
    assert report.ok, report.problems
    assert report.warnings == {"missing_system_message": 1}


def test_problems_name_the_line_and_the_message() -> None:
    report = validate_jsonl(lines(GOOD, with_message(3, tool_call_id="nope"), {"messages": 1}))
    assert not report.ok and report.invalid_lines == 2
    assert [str(p) for p in report.problems] == [
        "line 2: unknown_tool_call_id: message 4: tool_call_id 'nope' matches no earlier tool call",
        "line 3: missing_messages_list: no messages list, or an empty one",
    ]
    report = validate_jsonl(lines({"messages": ["x", {"role": "user", "content": "u"}]}))
    assert report.error_counts == {"data_type": 1, "example_missing_assistant_message": 1}
    assert report.warnings == {"missing_system_message": 1}


def test_warnings_are_counted_per_example() -> None:
    no_system = {"messages": GOOD["messages"][1:]}
    no_user = {"messages": [GOOD["messages"][0], GOOD["messages"][-1]]}
    report = validate_jsonl(lines(no_system, no_system, no_user))
    assert report.ok
    assert report.warnings == {"missing_system_message": 2, "missing_user_message": 1}


def test_too_few_examples_is_a_file_level_error() -> None:
    report = validate_jsonl(lines(total=9))
    assert report.error_counts == {"too_few_examples": 1}
    assert report.problems == [
        Problem(None, "too_few_examples", "9 examples; OpenAI requires at least 10")
    ]
    assert str(report.problems[0]).startswith("file: too_few_examples")
    assert validate_jsonl([]).error_counts == {"too_few_examples": 1}


def test_only_the_first_problems_are_listed_but_all_are_counted() -> None:
    report = validate_jsonl([b"{}\n"] * 30, max_listed=5)
    assert len(report.problems) == 5 and report.error_counts["missing_messages_list"] == 30
    assert report.to_json()["problems_truncated"] is True
    assert MAX_LISTED == 1000


def test_token_limit_and_statistics() -> None:
    long = with_message(1, content="word " * 200)
    report = validate_jsonl(lines(long, {"messages": 1}), max_tokens=100, model="gpt-4o-mini")
    assert report.error_counts == {"too_long": 1, "missing_messages_list": 1}
    tokens = report.to_json()["tokens"]
    assert tokens["max_tokens"] == 100 and tokens["too_long"] == 1
    assert tokens["examples_counted"] == 9  # lines with other errors are not counted
    assert tokens["min"] < 100 < tokens["max"]
    assert tokens["assistant_total"] > 0
    assert tokens["mean"] == round(tokens["total"] / 9, 2)
    empty = validate_jsonl([b"{}\n"], max_tokens=10).to_json()["tokens"]
    assert empty["examples_counted"] == 0 and empty["mean"] == 0.0


# -- DPO ------------------------------------------------------------------------------------------


def dpo(**changes: Any) -> dict[str, Any]:
    row = json.loads(json.dumps(GOOD_DPO))
    for key, value in changes.items():
        if value is ...:
            del row[key]
        else:
            row[key] = value
    return row


def test_a_good_dpo_file_passes() -> None:
    report = validate_jsonl(lines(fill=GOOD_DPO), fmt="openai-dpo", max_tokens=1000)
    assert report.ok, report.problems
    assert report.to_json()["tokens"]["examples_counted"] == 10


@pytest.mark.parametrize(
    ("row", "key"),
    [
        (b'"text"\n', "data_type"),
        (dpo(input=...), "missing_input"),
        (dpo(input=[]), "missing_input"),
        (dpo(input={"messages": []}), "missing_messages_list"),
        (dpo(input={**GOOD_DPO["input"], "extra": 1}), "unrecognized_key"),
        (dpo(input={**GOOD_DPO["input"], "parallel_tool_calls": 1}), "invalid_parallel_tool_calls"),
        (
            dpo(input={"messages": [{"role": "user", "content": "u", "weight": 1}]}),
            "message_unrecognized_key",
        ),
        (dpo(preferred_output=...), "missing_output"),
        (dpo(non_preferred_output=[]), "invalid_output"),
        (dpo(preferred_output=[GOOD_DPO["preferred_output"][0]] * 2), "invalid_output"),
        (dpo(preferred_output={"role": "assistant", "content": "x"}), "invalid_output"),
        (dpo(preferred_output=[{"role": "user", "content": "x"}]), "invalid_output"),
        (dpo(preferred_output=[{"role": "assistant", "content": ""}]), "missing_content"),
        (
            dpo(preferred_output=[{"role": "assistant", "content": "x", "weight": 1}]),
            "message_unrecognized_key",
        ),
        (dpo(extra=1), "unrecognized_key"),
    ],
)
def test_each_dpo_error_class(row: object, key: str) -> None:
    assert key in errors_of(row, "openai-dpo")


def test_old_dpo_key_names_are_named() -> None:
    row = dpo(preferred_output=..., preferred_completion=GOOD_DPO["preferred_output"])
    report = validate_jsonl(lines(row, fill=GOOD_DPO), fmt="openai-dpo")
    assert [p.message for p in report.problems] == [
        "'preferred_completion' is the old name: use 'preferred_output'",
        "no preferred_output",
    ]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format 'hf'"):
        validate_jsonl([], fmt="hf")
