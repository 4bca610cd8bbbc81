"""Shared helpers for the SSE and reassembly tests: the fixture corpus and split feeding."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from proxy.sse import SSEDecoder, SSEEvent

FIXTURES = Path(__file__).parent / "fixtures" / "sse"

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))


def skip_unless_slow_selected(config: pytest.Config) -> None:
    """The 10 000-example variants run only when ``-m slow`` selects them."""
    expression = str(config.getoption("markexpr") or "")
    if "slow" not in expression.replace("not slow", ""):
        pytest.skip("10 000-example property run; select it with -m slow")


@dataclass(frozen=True)
class Fixture:
    name: str
    raw: bytes
    expected: dict[str, Any]  # endpoint, done, complete, error, parse_errors, pending, response

    @property
    def endpoint(self) -> str:
        return str(self.expected["endpoint"])


def load_fixtures() -> list[Fixture]:
    return [
        Fixture(
            path.stem,
            path.read_bytes(),
            json.loads(path.with_name(f"{path.stem}.expected.json").read_text()),
        )
        for path in sorted(FIXTURES.glob("*.sse"))
    ]


def load_fixture(name: str) -> Fixture:
    return next(fixture for fixture in load_fixtures() if fixture.name == name)


def fixture_params() -> list[Any]:
    return [pytest.param(fixture, id=fixture.name) for fixture in load_fixtures()]


def decode(pieces: Iterable[bytes]) -> tuple[list[SSEEvent], bool]:
    """Feed ``pieces`` to a fresh decoder; return its events and ``pending`` at close."""
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    events += decoder.close()
    return events, decoder.pending


def split_at(data: bytes, offsets: Sequence[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (any order, duplicates allowed)."""
    cuts = [0, *sorted(offsets), len(data)]
    return [data[start:end] for start, end in zip(cuts, cuts[1:], strict=False)]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]
