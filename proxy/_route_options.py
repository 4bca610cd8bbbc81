"""The options ``stillroom routes create`` and ``set`` share: a route's fields as flags.

``field_options`` adds them and hands the command ``fields`` (the part of the admin API's body
they set, on top of ``--file``) and ``student`` (the student fields given, which ``set`` merges
into the stored student, since a PATCH replaces it whole). Values are checked where the admin
API checks them (``proxy.routing.routes``), so the CLI accepts what the API accepts; what the
flags themselves cannot hold raises ``BadUsage`` (one ``Error:`` line, exit 2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from proxy._capture_options import read_json_file
from proxy._capture_source import JSON, BadUsage

Command = Callable[..., Any]


def field_options(command: Command) -> Command:
    """The route's fields as options → ``fields``: the part of a body they set."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        model: str | None,
        student_url: str | None,
        student_model: str | None,
        student_key_env: str | None,
        tags: tuple[str, ...],
        tools: str | None,
        shadow_rate: float | None,
        full_shadow_rate: float | None,
        max_concurrency: int | None,
        timeout: float | None,
        thresholds: tuple[str, ...],
        min_shadow_pairs: int | None,
        file: str | None,
        **kw: Any,
    ) -> Any:
        fields: JSON = _read_file(file) if file is not None else {}
        student = {
            "base_url": student_url,
            "model": student_model,
            "api_key_env": student_key_env,
        }
        given = {
            "model": model,
            "shadow_rate": shadow_rate,
            "full_shadow_rate": full_shadow_rate,
            "max_concurrency": max_concurrency,
            "timeout_s": timeout,
            "min_shadow_pairs": min_shadow_pairs,
        }
        fields.update({key: value for key, value in given.items() if value is not None})
        if tags:
            fields["tags"] = dict(_pair(entry, "--tag", "KEY=VALUE") for entry in tags)
        if tools is not None:
            fields["tools"] = [name.strip() for name in tools.split(",") if name.strip()]
        if thresholds:
            fields["thresholds"] = {
                grader: _number(value, "--threshold")
                for grader, value in (_pair(e, "--threshold", "GRADER=MIN") for e in thresholds)
            }
        student_given = {key: value for key, value in student.items() if value is not None}
        return command(*args, fields=fields, student=student_given, **kw)

    options = [
        click.option("--model", metavar="NAME", help="The model name clients ask for."),
        click.option(
            "--student-url", metavar="URL",
            help="The student's OpenAI-compatible base URL, with /v1 (no credentials).",
        ),
        click.option("--student-model", metavar="NAME", help="The model name sent to it."),
        click.option(
            "--student-key-env", metavar="VAR",
            help="An environment variable of the server holding the student's key (the key "
            "itself is never stored).",
        ),
        click.option(
            "--tag", "tags", metavar="KEY=VALUE", multiple=True,
            help="A tag requests must carry to match; repeatable (set: replaces them all).",
        ),
        click.option(
            "--tools", metavar="A,B",
            help="The tool names the student knows (requests with others stay with the "
            "teacher); default: any.",
        ),
        click.option("--shadow-rate", type=float, help="Shadow: the share also sent to it (0-1)."),
        click.option(
            "--full-shadow-rate", type=float,
            help="Full: the share the teacher still answers too, to keep measuring (0-1).",
        ),
        click.option(
            "--max-concurrency", type=int, help="Shadow requests in flight at most (1-256)."
        ),
        click.option(
            "--timeout", type=float, help="Seconds to the student's first byte (0.1-600)."
        ),
        click.option(
            "--threshold", "thresholds", metavar="GRADER=MIN", multiple=True,
            help="Promotion: the minimum mean of a grader over the shadow pairs, e.g. "
            "rouge_l=0.8; repeatable (set: replaces them all).",
        ),
        click.option(
            "--min-shadow-pairs", type=int, help="Promotion: shadow pairs needed at least."
        ),
        click.option(
            "--file", metavar="FILE",
            help="A JSON object of route fields (- for stdin); the options above override it.",
        ),
    ]  # fmt: skip
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _pair(entry: str, flag: str, form: str) -> tuple[str, str]:
    key, sep, value = entry.partition("=")
    if not sep or not key.strip():
        raise BadUsage(f"{flag} takes {form}, got {entry!r:.80}")
    return key.strip(), value.strip()


def _number(value: str, flag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise BadUsage(f"{flag}: {value!r:.40} is not a number") from None


def _read_file(path: str) -> JSON:
    value = read_json_file(path, "--file")
    if not isinstance(value, dict):
        raise BadUsage("--file must hold a JSON object (route fields)")
    return value
