"""T19: schemathesis against the live server's /admin/openapi.json.

Every phase schemathesis has (examples, coverage, fuzzing, stateful), positive and negative
data, with the admin token configured so `ignored_auth` can strip or spoil it. Five checks
must hold with zero failures: not_a_server_error, status_code_conformance,
response_schema_conformance, negative_data_rejection, ignored_auth. The store is seeded with
real captures first, so list/get/patch/delete also meet existing rows (the stateful phase
follows ids from lists into the other routes). The default run uses a few examples per
operation; `-m slow` runs at least 200 per operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.engine import Status, from_schema
from schemathesis.engine.events import EngineFinished, FatalError, NonFatalError, ScenarioFinished

from tests._admin import AUTH, TOKEN, Admin, make_captures, wait_for_captures

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "ignored_auth",
)


@pytest.fixture
def seeded_admin(start_proxy, mock_url, tmp_path) -> Iterator[str]:
    db = tmp_path / "schema.db"
    with (
        start_proxy(
            upstream=mock_url, database=str(db), admin_token=TOKEN, flush_interval=0.02
        ) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        for _ in range(2):
            make_captures(base)
        wait_for_captures(Admin(base, http, db), 16)
        yield base


DELETING = ["deleteCapture", "deleteCaptures"]


def run_schemathesis(
    base: str, max_examples: int, *, deleting: bool = True
) -> tuple[list[str], int]:
    """Run the engine; return the failures (one line each) and how many cases were checked.

    ``deleting=False`` leaves out the delete routes, so the seeded captures survive for the
    stateful phase to follow from lists into get and patch.
    """
    config = schemathesis.Config.from_dict(
        {
            "seed": 19,
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "generation": {"mode": "all", "max-examples": max_examples},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "workers": 1,
            "request-timeout": 10,
        }
    )
    loaded = schemathesis.openapi.from_url(
        f"{base}/admin/openapi.json", config=config, headers=AUTH
    )
    loaded.config.base_url = base
    schema = loaded if deleting else loaded.exclude(operation_id=DELETING)
    failures: list[str] = []
    cases = 0
    for event in from_schema(schema).execute():
        if isinstance(event, ScenarioFinished):
            cases += len(event.recorder.cases)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE:
                        failures.append(describe(event, case_id, check))
        elif isinstance(event, NonFatalError | FatalError):
            failures.append(f"engine error: {event!r}")
        elif isinstance(event, EngineFinished):
            break
    return failures, cases


def describe(event: ScenarioFinished, case_id: str, check: Any) -> str:
    """One line for a failed check, with a curl command to replay it (the token masked)."""
    info = check.failure_info
    detail = f"{info.failure.title}: {info.failure.message}" if info is not None else ""
    curl = event.recorder.cases[case_id].value.as_curl_command()
    line = f"{event.recorder.label} [{event.phase}] {check.name}: {detail} :: {curl}"
    return line.replace(TOKEN, "<token>")


def check_admin_api(base: str, max_examples: int) -> int:
    """Curate first (captures still there), then everything including deletes; the cases run."""
    failures, kept = run_schemathesis(base, max_examples, deleting=False)
    assert not failures, "\n".join(failures[:20])
    failures, deleted = run_schemathesis(base, max_examples)
    assert not failures, "\n".join(failures[:20])
    return kept + deleted


@pytest.mark.timeout(180)  # ~35 s quiet; schemathesis on a loaded 2-vCPU machine takes longer
def test_admin_api_matches_its_openapi_document(seeded_admin):
    assert check_admin_api(seeded_admin, max_examples=25) > 8 * 25


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_admin_api_matches_its_openapi_document_200_examples(seeded_admin):
    assert check_admin_api(seeded_admin, max_examples=200) > 8 * 200
