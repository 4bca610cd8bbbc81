"""Capture ids: UUIDv7 layout, time-sortable, monotonic within a process."""

from __future__ import annotations

import time
import uuid

import pytest

from storage import ids
from storage.ids import capture_id_time, new_capture_id


def test_ids_are_uuid7_text_with_the_current_time() -> None:
    before = time.time()
    value = new_capture_id()
    parsed = uuid.UUID(value)
    assert str(parsed) == value
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert before - 0.002 <= capture_id_time(value) <= time.time() + 0.002


def test_ids_are_strictly_increasing_and_unique() -> None:
    values = [new_capture_id() for _ in range(20_000)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


def test_order_holds_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = new_capture_id()
    monkeypatch.setattr(time, "time_ns", lambda: 1_000_000_000)  # 1970: far in the past
    later = [new_capture_id() for _ in range(100)]
    assert [first, *later] == sorted([first, *later])


def test_counter_overflow_moves_to_the_next_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    first = new_capture_id()
    monkeypatch.setattr(ids, "_last_counter", ids._COUNTER_MAX)
    monkeypatch.setattr(time, "time_ns", lambda: 0)
    second = new_capture_id()
    assert second > first
    assert capture_id_time(second) == pytest.approx(capture_id_time(first) + 0.001, abs=1e-3)
