"""Captures and stats as text for people: the table of ``captures list``, the page of
``captures show`` and the summary of ``stats``.

Everything here reads the admin API's JSON (``proxy.admin.serialize``), so a local database and a
running server print the same. Captured text is untrusted: control characters (terminal escape
sequences among them) are shown as ``\\xNN`` instead of being written to the terminal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]

PREVIEW_WIDTH = 60  # preview characters in a table that does not go to a terminal
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_PART_PLACEHOLDERS = {
    "image_url": "[image]",
    "input_image": "[image]",
    "input_audio": "[audio]",
    "input_file": "[file]",
    "file": "[file]",
    "refusal": "[refusal]",
}


def clean(text: str) -> str:
    """Text safe to print: control characters (except newline and tab) escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def one_line(text: str, width: int) -> str:
    flat = " ".join(clean(text).split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def format_time(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_tags(tags: object) -> str:
    if not isinstance(tags, dict) or not tags:
        return "-"
    return ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))


# -- message text -------------------------------------------------------------------------------


def content_text(content: object) -> str:
    """A message's content (a string or a list of parts) as plain text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else json.dumps(content)
    pieces = []
    for part in content:
        if isinstance(part, str):
            pieces.append(part)
        elif isinstance(part, dict):
            text = part.get("text", part.get("refusal"))
            if isinstance(text, str):
                pieces.append(text)
            else:
                pieces.append(_PART_PLACEHOLDERS.get(str(part.get("type")), "[part]"))
    return "\n".join(pieces)


def _call_text(name: object, arguments: object) -> str:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return f"call {name}({args})"


def request_messages(detail: JSON) -> list[tuple[str, str]]:
    """``(role, text)`` for each prompt message of the request, in order."""
    body = detail.get("request")
    req = body.get("json") if isinstance(body, dict) else None
    if not isinstance(req, dict):
        text = body.get("text") if isinstance(body, dict) else None
        return [("request", text)] if isinstance(text, str) else []
    out: list[tuple[str, str]] = []
    if isinstance(req.get("instructions"), str):
        out.append(("instructions", req["instructions"]))
    for name in ("messages", "input", "prompt"):
        value = req.get(name)
        if isinstance(value, str):
            out.append(("user" if name != "prompt" else "prompt", value))
        elif isinstance(value, list):
            out.extend(_item_text(item) for item in value)
    return out


def _item_text(item: object) -> tuple[str, str]:
    if not isinstance(item, dict):
        return ("input", item if isinstance(item, str) else json.dumps(item))
    kind = item.get("type")
    if kind == "function_call":
        return ("assistant", _call_text(item.get("name"), item.get("arguments")))
    if kind == "function_call_output":
        return ("tool", content_text(item.get("output")))
    role = str(item.get("role", kind or "input"))
    text = content_text(item.get("content"))
    calls = item.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function", {}) if isinstance(call, dict) else {}
            text += ("\n" if text else "") + _call_text(fn.get("name"), fn.get("arguments"))
    return (role, text)


def answer_lines(response: object) -> list[str]:
    """The answer in a reassembled response object (chat, Responses, completions, embeddings)."""
    if not isinstance(response, dict):
        return []
    lines: list[str] = []
    choices = response.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if isinstance(choice.get("text"), str):
                lines.append(choice["text"])
            message = choice.get("message")
            if isinstance(message, dict):
                lines.append(_item_text(message)[1])
    output = response.get("output")
    if isinstance(output, list):
        for item in output:
            if isinstance(item, dict) and item.get("type") in ("message", "function_call"):
                lines.append(_item_text(item)[1])
    data = response.get("data")
    if response.get("object") == "list" and isinstance(data, list):
        first = data[0].get("embedding") if data and isinstance(data[0], dict) else None
        size = f" of {len(first)} dimensions" if isinstance(first, list) else ""
        lines.append(f"[{len(data)} embeddings{size}]")
    return [line for line in lines if line]


def preview_of(detail: JSON) -> str:
    """The last prompt message a person wrote, else the answer: what a table row shows."""
    messages = request_messages(detail)
    for role, text in reversed(messages):
        if role in ("user", "prompt", "input") and text.strip():
            return text
    answer = answer_lines(detail.get("response"))
    return answer[0] if answer else (messages[-1][1] if messages else "")


# -- tables ------------------------------------------------------------------------------------


def _tokens(capture: JSON) -> str:
    usage = capture.get("usage") or {}
    given, got = usage.get("input_tokens"), usage.get("output_tokens")
    if given is None and got is None:
        return "-"
    return f"{given if given is not None else '?'}/{got if got is not None else '?'}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], last_width: int | None) -> str:
    """Left-aligned columns; the last one cut to ``last_width`` characters."""
    cells = [[clean(c) for c in row] for row in rows]
    if last_width is not None:
        cells = [[*row[:-1], one_line(row[-1], last_width)] for row in cells]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [list(headers), *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def captures_table(captures: Sequence[JSON], previews: Mapping[str, str], width: int | None) -> str:
    """The ``captures list`` table; previews fill ``width`` columns (None: ``PREVIEW_WIDTH``)."""
    headers = ["ID", "CREATED (UTC)", "MODEL", "ENDPOINT", "OUTCOME", "TOKENS", "TAGS", "PREVIEW"]
    rows = [
        [
            str(c.get("id")),
            format_time(c.get("created_at")),
            str(c.get("model") or "-"),
            str(c.get("endpoint")),
            str(c.get("outcome")) + _curation_marks(c),
            _tokens(c),
            one_line(format_tags(c.get("tags")), 40),
            previews.get(str(c.get("id")), ""),
        ]
        for c in captures
    ]
    if width is None:
        return table(headers, rows, PREVIEW_WIDTH)
    fixed = table(headers[:-1], [r[:-1] for r in rows], None).splitlines()[0]
    return table(headers, rows, max(20, width - len(fixed) - 2))


def _curation_marks(capture: JSON) -> str:
    curation = capture.get("curation") or {}
    marks = ""
    feedback = curation.get("feedback")
    if isinstance(feedback, dict) and isinstance(feedback.get("score"), int | float):
        score = feedback["score"]
        marks += " +" if score > 0 else " -" if score < 0 else " ~"
    if curation.get("excluded"):
        marks += " x"
    return marks


# -- one capture ---------------------------------------------------------------------------------


def _ms(value: object) -> str:
    return f"{value:.1f} ms" if isinstance(value, int | float) else "-"


def _fields(capture: JSON) -> list[tuple[str, str]]:
    usage = capture.get("usage") or {}
    curation = capture.get("curation") or {}
    feedback = curation.get("feedback")
    model = str(capture.get("model") or "-")
    requested = capture.get("requested_model")
    if requested and requested != capture.get("model"):
        model += f" (requested {requested})"
    rows = [
        ("created", format_time(capture.get("created_at")) + " UTC"),
        ("endpoint", f"{capture.get('method')} {capture.get('path')}"),
        ("model", model),
        ("stream", "yes" if capture.get("stream") else "no"),
        ("outcome", f"{capture.get('outcome')} (status {capture.get('status') or '-'})"),
        ("latency", f"{_ms(capture.get('latency_ms'))}, first byte {_ms(capture.get('ttft_ms'))}"),
        (
            "tokens",
            ", ".join(
                f"{usage.get(k + '_tokens')} {k}"
                for k in ("input", "output", "total", "cached", "reasoning")
                if usage.get(k + "_tokens") is not None
            )
            or "-",
        ),
        ("tags", format_tags(capture.get("tags"))),
    ]
    if isinstance(feedback, dict):
        note = f' "{feedback["note"]}"' if feedback.get("note") else ""
        rows.append(("feedback", f"{feedback.get('score')}{note}"))
    else:
        rows.append(("feedback", "-"))
    rows.append(("excluded", "yes (kept out of training)" if curation.get("excluded") else "no"))
    if curation.get("updated_at") is not None:
        rows.append(("curated", format_time(curation["updated_at"]) + " UTC"))
    for key in ("response_id", "previous_response_id", "upstream_request_id", "key_fingerprint"):
        if capture.get(key):
            rows.append((key.replace("_", " "), str(capture[key])))
    if capture.get("error"):
        rows.append(("error", str(capture["error"])))
    size = f"{capture.get('request_bytes')} request, {capture.get('response_bytes')} response"
    rows.append(("bytes", size + (" (truncated)" if capture.get("response_truncated") else "")))
    return rows


def _indented(text: str) -> list[str]:
    return ["    " + line for line in clean(text).splitlines()] or ["    "]


def capture_text(detail: JSON) -> str:
    """``captures show``: the fields, the conversation chain, the prompt and the answer."""
    lines = [f"capture {detail.get('id')}"]
    fields = _fields(detail)
    width = max(len(name) for name, _ in fields)
    lines += [f"  {name.ljust(width)}  {clean(value)}" for name, value in fields]
    conversation = detail.get("conversation")
    if isinstance(conversation, dict):
        ids = conversation.get("capture_ids") or []
        state = (
            "complete"
            if conversation.get("complete")
            else (f"starts at {conversation.get('missing_response_id')}, which was not captured")
        )
        lines += ["", f"Conversation ({len(ids)} captures, {state}), oldest first:"]
        lines += [f"  {capture_id}" for capture_id in ids]
    lines += ["", "Request:"]
    for role, text in request_messages(detail) or [("-", "(no messages)")]:
        lines += [f"  [{role}]", *_indented(text)]
    lines += ["", "Answer:"]
    lines += [line for text in answer_lines(detail.get("response")) for line in _indented(text)]
    if not answer_lines(detail.get("response")):
        lines.append("    (none)")
    corrected = (detail.get("curation") or {}).get("corrected_response")
    if corrected is not None:
        lines += ["", "Corrected answer (export prefers it):"]
        lines += [line for text in answer_lines(corrected) for line in _indented(text)]
    return "\n".join(lines)


def curation_line(capture: JSON) -> str:
    """One line after an edit: the id and its tags and curation now."""
    curation = capture.get("curation") or {}
    feedback = curation.get("feedback")
    score = feedback.get("score") if isinstance(feedback, dict) else None
    shown = "-" if score is None else str(score)
    excluded = "yes" if curation.get("excluded") else "no"
    return clean(
        f"{capture.get('id')}  tags: {format_tags(capture.get('tags'))}  feedback: {shown}  "
        f"excluded: {excluded}"
    )


# -- stats ---------------------------------------------------------------------------------------


def _size(n: object) -> str:
    if not isinstance(n, int | float):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def _counts(title: str, counts: object) -> list[str]:
    if not isinstance(counts, dict) or not counts:
        return [f"{title}: -"]
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    names = [clean(str(k)) or "(none)" for k, _ in items]
    width, digits = max(map(len, names)), max(len(str(v)) for _, v in items)
    return [f"{title}:"] + [
        f"  {name.ljust(width)}  {v:>{digits}}" for name, (_, v) in zip(names, items, strict=True)
    ]


def stats_text(stats: JSON) -> str:
    tokens = stats.get("tokens") or {}
    lines = [
        f"captures       {stats.get('captures')}",
        "tokens         "
        + ", ".join(
            f"{tokens.get(k)} {k}" for k in ("input", "output", "total", "cached", "reasoning")
        ),
        f"with feedback  {stats.get('with_feedback')}",
        f"excluded       {stats.get('excluded')}",
        f"store size     {_size(stats.get('store_bytes'))}",
        "",
        *_counts("by model", stats.get("by_model")),
        *_counts("by endpoint", stats.get("by_endpoint")),
        *_counts("by outcome", stats.get("by_outcome")),
    ]
    by_tag = stats.get("by_tag")
    if isinstance(by_tag, dict) and by_tag:
        flat = {f"{k}={v}": n for k, values in by_tag.items() for v, n in values.items()}
        lines += _counts("by tag", flat)
    else:
        lines.append("by tag: -")
    by_day = stats.get("by_day")
    if isinstance(by_day, dict) and by_day:
        digits = max(len(str(n)) for n in by_day.values())
        lines.append("by day (UTC):")
        lines += [f"  {day}  {by_day[day]:>{digits}}" for day in sorted(by_day)]
    else:
        lines.append("by day (UTC): -")
    return "\n".join(lines)
