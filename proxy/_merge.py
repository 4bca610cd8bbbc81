"""Merge streamed delta fragments into one object: the fold step under chat reassembly.

``merge_delta(acc, delta)`` folds one fragment into ``acc`` in place; ``finish_merged(acc)``
turns the accumulator into plain JSON once the stream is over. The rules, per key of a delta:

- ``null`` values carry no information and are skipped;
- identity keys (``id``, ``type``, ``name``, ``role``, ``index``) keep the first non-empty
  value: OpenAI sends them once, some compatible servers repeat them on every fragment;
- strings concatenate (``content``, ``refusal``, ``arguments``, ``reasoning_content``, ...);
- objects merge recursively; numbers and booleans take the latest value;
- lists of objects that carry an integer ``index`` (``tool_calls`` always) merge entry by entry
  on that ``index``, so interleaved and parallel fragments land in the right slot whatever their
  arrival order; entries without an ``index`` (servers that omit it) go to the slot with the
  same ``id``, to a new slot when the ``id`` is new, else (no ``id``, or the latest slot has
  none yet) to the latest slot. ``index`` is a
  merge key only and is removed from the finished entries;
- any other list extends (``logprobs.content``, ``annotations``).

This is the openai SDK's ``accumulate_delta`` with two deliberate changes: numbers are replaced,
not added, and identity keys are never concatenated. Below 32 levels of nesting (garbage only)
values are replaced whole, so no input can exhaust the recursion limit.
"""

from __future__ import annotations

from typing import Any

__all__ = ["finish_merged", "merge_delta"]

_IDENTITY_KEYS = frozenset({"id", "type", "name", "role", "index"})
_MAX_DEPTH = 32  # real deltas nest 4 deep; garbage may nest 1000 deep (orjson's limit)


class _Indexed(dict[int, dict[str, Any]]):
    """Fragments of a streamed list, keyed by their ``index``."""


def _is_indexed(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(entry, dict) and type(entry.get("index")) is int for entry in value)
    )


def merge_delta(acc: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Fold ``delta`` into ``acc`` (mutated) and return ``acc``."""
    _merge(acc, delta, 0)
    return acc


def _merge(acc: dict[str, Any], delta: dict[str, Any], depth: int) -> None:
    deeper = depth + 1
    for key, value in delta.items():
        if value is None:
            continue
        current = acc.get(key)
        if deeper > _MAX_DEPTH:  # absurdly deep garbage: keep it whole, never recurse
            acc[key] = value
        elif isinstance(current, _Indexed):
            _merge_indexed(current, value, deeper)
        elif current is None:
            if key == "tool_calls" or _is_indexed(value):
                acc[key] = indexed = _Indexed()
                _merge_indexed(indexed, value, deeper)
            elif isinstance(value, dict):
                fresh: dict[str, Any] = {}
                acc[key] = fresh
                _merge(fresh, value, deeper)
            elif isinstance(value, list):
                acc[key] = list(value)
            else:
                acc[key] = value
        elif key in _IDENTITY_KEYS:
            if current == "":
                acc[key] = value
        elif isinstance(current, str) and isinstance(value, str):
            acc[key] = current + value
        elif isinstance(current, dict) and isinstance(value, dict):
            _merge(current, value, deeper)
        elif isinstance(current, list) and isinstance(value, list):
            current.extend(value)
        else:
            acc[key] = value


def _merge_indexed(acc: _Indexed, value: Any, depth: int) -> None:
    if not isinstance(value, list):
        return
    for entry in value:
        if not isinstance(entry, dict):
            continue
        index = entry.get("index")
        if type(index) is not int:
            index = _slot_without_index(acc, entry.get("id"))
        slot = acc.get(index)
        if slot is None:
            acc[index] = slot = {}
        _merge(slot, entry, depth)


def _slot_without_index(acc: _Indexed, entry_id: Any) -> int:
    if not acc:
        return 0
    latest = max(acc)
    if entry_id and acc[latest].get("id"):
        for index, slot in acc.items():
            if slot.get("id") == entry_id:
                return index
        return latest + 1
    return latest


def finish_merged(acc: dict[str, Any]) -> dict[str, Any]:
    """Turn merged index-keyed lists back into JSON lists, in place; return ``acc``."""
    _finish(acc, 0)
    return acc


def _finish(acc: dict[str, Any], depth: int) -> None:
    if depth >= _MAX_DEPTH:  # nothing below this depth was merged, so nothing to convert
        return
    for key, value in acc.items():
        if isinstance(value, _Indexed):
            entries = []
            for _, entry in sorted(value.items()):
                entry.pop("index", None)
                _finish(entry, depth + 1)
                entries.append(entry)
            acc[key] = entries
        elif isinstance(value, dict):
            _finish(value, depth + 1)
