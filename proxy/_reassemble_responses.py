"""Fold the events of a Responses API stream (``/v1/responses``) into its final object.

The terminal event (``response.completed``, ``response.incomplete`` or ``response.failed``)
carries the full final ``response``, usage included; that object is the result, as in the
openai SDK. If it has no ``output``, the output is rebuilt from the stream as below.

When the stream ends before a terminal event, the result is built from what arrived: the
latest lifecycle snapshot (``response.created`` / ``.queued`` / ``.in_progress``) with
``status`` set to ``"incomplete"`` (``incomplete_details`` is left as sent, since no reason was
given) and ``output`` rebuilt in ``output_index`` order:

- an item finished by ``response.output_item.done`` is taken whole from that event;
- an unfinished item starts from ``response.output_item.added`` (or, if that was lost, a stub
  ``{"id": item_id, "type": ...}``), its content and summary parts from
  ``response.content_part.*`` / ``response.reasoning_summary_part.*``, and the text deltas
  (output text, refusal, reasoning text and summary, function-call and MCP arguments, custom
  tool input, code-interpreter code) are appended to the field they fill; a ``.done`` event for
  a field replaces what the deltas built; ``annotation.added`` appends to ``annotations``.

Events are taken in arrival order (a single stream is already ordered by
``sequence_number``); unknown event types are ignored, since new ones appear often. An
``error`` event is recorded (its ``code``/``message``/``param``), as is the ``error`` of a
failed response.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxy.types import JSONObject

__all__ = ["fold_response_events"]

_LIFECYCLE = frozenset({"response.created", "response.queued", "response.in_progress"})
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_PARTS = {
    "response.content_part.added": "content",
    "response.content_part.done": "content",
    "response.reasoning_summary_part.added": "summary",
    "response.reasoning_summary_part.done": "summary",
}
# event type -> (item field holding parts, or None for a field of the item itself;
#                field the text goes to; type of a stub part; type of a stub item)
_TEXT_EVENTS: dict[str, tuple[str | None, str, str, str]] = {
    "response.output_text": ("content", "text", "output_text", "message"),
    "response.refusal": ("content", "refusal", "refusal", "message"),
    "response.reasoning_text": ("content", "text", "reasoning_text", "reasoning"),
    "response.reasoning_summary_text": ("summary", "text", "summary_text", "reasoning"),
    "response.function_call_arguments": (None, "arguments", "", "function_call"),
    "response.custom_tool_call_input": (None, "input", "", "custom_tool_call"),
    "response.mcp_call_arguments": (None, "arguments", "", "mcp_call"),
    "response.code_interpreter_call_code": (None, "code", "", "code_interpreter_call"),
}


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


class _ResponseFold:
    def __init__(self) -> None:
        self.snapshot: JSONObject | None = None
        self.final: JSONObject | None = None
        self.error: JSONObject | None = None
        self.items: dict[int, JSONObject] = {}
        self.done_items: dict[int, JSONObject] = {}
        self.parts: dict[tuple[int, str, int], JSONObject] = {}

    def fold(self, event_name: str, payload: JSONObject) -> None:
        kind = payload.get("type")
        if not isinstance(kind, str):
            kind = event_name
        if kind in _LIFECYCLE or kind in _TERMINAL:
            response = payload.get("response")
            if isinstance(response, dict):
                if kind in _TERMINAL:
                    self.final = response
                    self._record_error(response.get("error"))
                else:
                    self.snapshot = response
        elif kind == "error" or payload.get("error"):
            nested = payload.get("error")
            self._record_error(
                nested
                if nested
                else {k: v for k, v in payload.items() if k not in ("type", "sequence_number")}
            )
        elif kind in ("response.output_item.added", "response.output_item.done"):
            index, item = _int(payload.get("output_index")), payload.get("item")
            if index is not None and isinstance(item, dict):
                (self.items if kind.endswith("added") else self.done_items)[index] = item
        elif kind in _PARTS:
            self._fold_part(_PARTS[kind], payload)
        elif kind == "response.output_text.annotation.added":
            part = self._target(payload, "content", "output_text", "message")
            annotation = payload.get("annotation")
            if part is not None and annotation is not None:
                annotations = part.get("annotations")
                if not isinstance(annotations, list):
                    part["annotations"] = annotations = []
                annotations.append(annotation)
        else:
            self._fold_text(kind, payload)

    def _record_error(self, error: Any) -> None:
        if self.error is None and error:
            self.error = error if isinstance(error, dict) else {"message": str(error)}

    def _fold_part(self, container: str, payload: JSONObject) -> None:
        index = _int(payload.get("output_index"))
        part_index = _int(payload.get(f"{container}_index"))
        part = payload.get("part")
        if index is not None and part_index is not None and isinstance(part, dict):
            self.parts[(index, container, part_index)] = part

    def _fold_text(self, kind: str, payload: JSONObject) -> None:
        stem, _, suffix = kind.rpartition(".")
        spec = _TEXT_EVENTS.get(stem)
        if spec is None or suffix not in ("delta", "done"):
            return
        container, text_field, part_type, item_type = spec
        target = self._target(payload, container, part_type, item_type)
        if target is None:
            return
        if suffix == "delta":
            delta = payload.get("delta")
            if isinstance(delta, str):
                current = target.get(text_field)
                target[text_field] = (current if isinstance(current, str) else "") + delta
        else:
            value = payload.get(text_field)
            if isinstance(value, str):
                target[text_field] = value

    def _target(
        self, payload: JSONObject, container: str | None, part_type: str, item_type: str
    ) -> JSONObject | None:
        """The item (or the part of it) an event writes to; None once the item is done."""
        index = _int(payload.get("output_index"))
        if index is None or index in self.done_items:
            return None
        item = self.items.get(index)
        if item is None:
            item = self.items[index] = {"id": payload.get("item_id"), "type": item_type}
        if container is None:
            return item
        part_index = _int(payload.get(f"{container}_index"))
        if part_index is None:
            return None
        key = (index, container, part_index)
        part = self.parts.get(key)
        if part is None:
            part = self.parts[key] = {"type": part_type}
        return part

    def output(self) -> list[JSONObject]:
        parts_by_item: dict[int, list[tuple[str, int, JSONObject]]] = {}
        for (index, container, part_index), part in sorted(self.parts.items()):
            parts_by_item.setdefault(index, []).append((container, part_index, part))
        output: list[JSONObject] = []
        for index in sorted(self.items.keys() | self.done_items.keys()):
            done = self.done_items.get(index)
            if done is not None:
                output.append(done)
                continue
            item = self.items[index]
            for container, part_index, part in parts_by_item.get(index, ()):
                current = item.get(container)
                parts = list(current) if isinstance(current, list) else []
                if 0 <= part_index < len(parts):
                    parts[part_index] = part
                else:
                    parts.append(part)
                item[container] = parts
            output.append(item)
        return output


def fold_response_events(
    payloads: Iterable[tuple[str, JSONObject]],
) -> tuple[JSONObject | None, bool, bool, JSONObject | None]:
    """Fold ``(event name, data object)`` pairs; return (response, done, complete, error)."""
    fold = _ResponseFold()
    for event_name, payload in payloads:
        fold.fold(event_name, payload)
    if fold.final is not None:
        response = dict(fold.final)
        if response.get("output") is None:
            response["output"] = fold.output()
        complete = response.get("status") == "completed" and fold.error is None
        return response, True, complete, fold.error
    if fold.snapshot is None and not fold.items and not fold.done_items:
        return None, False, False, fold.error
    response = dict(fold.snapshot) if fold.snapshot is not None else {"object": "response"}
    response["status"] = "incomplete"
    response["output"] = fold.output()
    return response, False, False, fold.error
