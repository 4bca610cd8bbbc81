"""Check a JSONL file against OpenAI's fine-tuning format rules, line by line.

``validate_jsonl(path_or_lines, fmt=...)`` implements the checks of OpenAI's data-preparation
cookbook (``../shared/reference/openai-api.md`` §6.7) and extends them for today's format:

* every line is one JSON object (``invalid_json``, ``data_type``) with only the documented keys
  (``unrecognized_key``);
* ``openai-chat``: a non-empty ``messages`` list (``missing_messages_list``); each message has
  a known role (``unrecognized_role``: ``system``, ``user``, ``assistant``, ``tool``,
  ``function``; ``developer`` must be exported as ``system``), its role's keys only
  (``message_missing_key``, ``message_unrecognized_key``), and content (``missing_content``:
  text, or a list of ``text`` / ``image_url`` (user) / ``refusal`` (assistant) parts; ``null``
  or absent only next to ``tool_calls``, ``function_call`` or ``refusal``); no ``input_audio``
  or ``file`` parts (``unsupported_content_part``); well-formed tool calls
  (``invalid_tool_calls``) whose arguments are JSON text (``tool_arguments_not_string``,
  ``invalid_tool_arguments``); every ``tool_call_id`` answers an earlier tool call
  (``unknown_tool_call_id``); ``weight`` only on assistant messages and only 0 or 1
  (``invalid_weight``); an assistant message (``example_missing_assistant_message``) with
  weight other than 0 (``no_trained_assistant_message``); well-formed ``tools`` and
  ``parallel_tool_calls``;
* ``openai-dpo``: ``input`` (``missing_input``) holding the messages as above (without
  ``weight``), and ``preferred_output`` / ``non_preferred_output`` (``missing_output``), each a
  list of exactly one assistant message (``invalid_output``); the old ``*_completion`` names
  are reported with the new ones;
* with ``max_tokens``: examples counted longer (``storage.tokens``, the cookbook's method) are
  errors (``too_long``): OpenAI would truncate them, Stillroom drops them;
* the file holds at least 10 examples (``too_few_examples``, the one file-level error).

Warnings, counted per example: ``missing_system_message``, ``missing_user_message``. Pure and
streaming: the file is read line by line; only the first ``max_listed`` problems are kept with
their line numbers, the counts are always complete.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

from storage._validate_checks import Found, check_chat, check_dpo

ValidateFormat = Literal["openai-chat", "openai-dpo"]
VALIDATE_FORMATS: tuple[ValidateFormat, ...] = get_args(ValidateFormat)
MIN_EXAMPLES = 10
MAX_LISTED = 1000

_CHECKS: dict[str, Callable[[object, Found], None]] = {
    "openai-chat": check_chat,
    "openai-dpo": check_dpo,
}


@dataclass(frozen=True, slots=True)
class Problem:
    line: int | None  # 1-based; None for the file-level rule
    key: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}: {self.key}: {self.message}"


@dataclass
class Report:
    """What ``validate_jsonl`` found. ``ok`` when there is no error (warnings allowed)."""

    fmt: str
    examples: int = 0  # lines, blank ones included (each must be an example)
    invalid_lines: int = 0  # lines with at least one error
    error_counts: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)  # the first ``max_listed``
    tokens: TokenTally | None = None  # when ``max_tokens`` was given

    @property
    def ok(self) -> bool:
        return not self.error_counts

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.fmt,
            "ok": self.ok,
            "examples": self.examples,
            "invalid_lines": self.invalid_lines,
            "errors": dict(sorted(self.error_counts.items())),
            "warnings": dict(sorted(self.warnings.items())),
            "problems": [
                {"line": p.line, "key": p.key, "message": p.message} for p in self.problems
            ],
            "problems_truncated": sum(self.error_counts.values()) > len(self.problems),
            "tokens": self.tokens.to_json() if self.tokens is not None else None,
        }


@dataclass
class TokenTally:
    """Running token statistics of the examples counted (those without other errors)."""

    max_tokens: int
    examples: int = 0
    total: int = 0
    min: int = 0
    max: int = 0
    assistant_total: int = 0  # tokens of the trained assistant messages
    too_long: int = 0

    def add(self, size: int, assistant: int) -> None:
        self.min = size if not self.examples else min(self.min, size)
        self.max = max(self.max, size)
        self.examples += 1
        self.total += size
        self.assistant_total += assistant
        self.too_long += size > self.max_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "examples_counted": self.examples,
            "total": self.total,
            "min": self.min,
            "mean": round(self.total / self.examples, 2) if self.examples else 0.0,
            "max": self.max,
            "assistant_total": self.assistant_total,
            "too_long": self.too_long,
        }


def validate_jsonl(
    path_or_lines: str | os.PathLike[str] | Iterable[bytes | str],
    *,
    fmt: str = "openai-chat",
    max_tokens: int | None = None,
    model: str | None = None,
    max_listed: int = MAX_LISTED,
) -> Report:
    """Check every line of a JSONL file (a path, or an iterable of lines) and report.

    ``model`` picks the token encoding when ``max_tokens`` is given (see ``storage.tokens``).
    """
    if fmt not in _CHECKS:
        raise ValueError(f"unknown format {fmt!r:.40}; known: {', '.join(VALIDATE_FORMATS)}")
    check = _CHECKS[fmt]
    report = Report(fmt=fmt)
    tally = report.tokens = TokenTally(max_tokens) if max_tokens is not None else None

    def add(line: int | None, key: str, message: str) -> None:
        report.error_counts[key] += 1
        if len(report.problems) < max_listed:
            report.problems.append(Problem(line, key, message))

    for number, raw in enumerate(_lines(path_or_lines), 1):
        report.examples += 1
        parsed, not_json = _parse(raw)
        found = Found()
        if not_json is not None:
            found.error("invalid_json", not_json)
        else:
            check(parsed, found)
            report.warnings.update(found.warnings)
            if tally is not None and not found.errors:
                size = _count(parsed, fmt, model, tally)
                if size > tally.max_tokens:
                    found.error("too_long", f"{size} tokens, over the limit of {max_tokens}")
        for key, message in found.errors:
            add(number, key, message)
        report.invalid_lines += bool(found.errors)
    if report.examples < MIN_EXAMPLES:
        add(
            None,
            "too_few_examples",
            f"{report.examples} examples; OpenAI requires at least {MIN_EXAMPLES}",
        )
    return report


def _lines(source: str | os.PathLike[str] | Iterable[bytes | str]) -> Iterator[bytes | str]:
    if isinstance(source, str | os.PathLike):
        with Path(source).open("rb") as file:
            yield from file
    else:
        yield from source


def _parse(raw: bytes | str) -> tuple[object, str | None]:
    """The line's JSON value, or why it is not JSON."""
    text = raw.rstrip(b"\r\n") if isinstance(raw, bytes) else raw.rstrip("\r\n")
    if not text.strip():
        return None, "the line is empty"
    try:
        return orjson.loads(text), None
    except orjson.JSONDecodeError:
        return None, "the line is not valid JSON (or not UTF-8)"


def _count(line: Any, fmt: str, model: str | None, tally: TokenTally) -> int:
    """The example's tokens by the cookbook's method; a DPO line counts as its longer side."""
    from storage.tokens import count_answer, count_example

    if fmt == "openai-dpo":
        given = line["input"]
        size = max(
            count_example([*given["messages"], *line[key]], given.get("tools"), model)
            for key in ("preferred_output", "non_preferred_output")
        )
        assistant = count_answer(line["preferred_output"][0], model)
    else:
        size = count_example(line["messages"], line.get("tools"), model)
        assistant = sum(
            count_answer(message, model)
            for message in line["messages"]
            if message.get("role") == "assistant" and message.get("weight", 1) != 0
        )
    tally.add(size, assistant)
    return size
