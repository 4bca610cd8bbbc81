"""`stillroom eval run|show|list` for real: teacher traffic captured through the proxy from
`stillroom mock`, a dataset with a holdout split, a student (another mock, reached directly or
through the proxy), graders, thresholds, the judge through the proxy; the report's numbers come
from the answers, and the proxy's own eval and judge traffic never reaches a dataset."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest
from click.testing import CliRunner

from proxy.cli import cli
from proxy.mock import MockOptions, create_mock_app
from storage.datasets import DatasetSpec, create_dataset
from storage.query import CaptureFilter
from storage.sqlite import SQLiteStore
from tests._server import serve_in_thread

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        },
    },
}


def invoke(args):
    result = CliRunner().invoke(cli, args, prog_name="stillroom")
    assert "Traceback" not in result.output, result.output
    return result


async def _count(db) -> int:
    async with SQLiteStore(db) as store:
        return await store.count()


@pytest.fixture
def traffic(start_proxy, mock_url, tmp_path):
    """24 captures (tagged by team, a third with a tool), and dataset ``qa`` with holdout."""
    db = tmp_path / "t.db"
    with start_proxy(upstream=mock_url, database=str(db), flush_interval=0.02) as base:
        for n in range(24):
            team = "search" if n % 2 else "support"
            headers = {"X-Stillroom-Tags": f"team={team}"}
            with openai.OpenAI(
                base_url=base + "/v1", api_key="sk-t", max_retries=0, default_headers=headers
            ) as client:
                extra = {"tools": [TOOL]} if n % 3 == 0 else {}
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"Question number {n}?"}],
                    **extra,
                )
        deadline = time.monotonic() + 10
        while asyncio.run(_count(db)) < 24:
            assert time.monotonic() < deadline
            time.sleep(0.05)

    async def make() -> None:
        async with SQLiteStore(db) as store:
            spec = DatasetSpec("qa", where=CaptureFilter(), validation=0.0, holdout=0.5)
            await create_dataset(store, spec)

    asyncio.run(make())
    return db


def test_eval_run_show_list_compare_and_check(traffic, tmp_path):
    db = traffic
    with serve_in_thread(create_mock_app(MockOptions())) as student:
        where = ["--database", str(db)]
        first = invoke(["eval", "run", "--dataset", "qa", "--student-url", student + "/v1",
                        "--student-model", "student-a", "--threshold", "rouge_l=0.99",
                        "--name", "first", "--json", *where])  # fmt: skip
        assert first.exit_code == 0, first.output
        report = json.loads(first.output)
        checked = invoke(["eval", "run", "--dataset", "qa", "--student-url", student + "/v1",
                          "--student-model", "student-b", "--check",
                          "--threshold", "rouge_l=0.99", *where])  # fmt: skip
        assert checked.exit_code == 1 and "FAILED" in checked.output
    assert report["status"] == "completed" and report["total"] >= 6
    graders = report["graders"]
    assert set(graders) == {"exact_match", "tool_calls", "json_valid", "rouge_l", "chrf"}
    rouge = graders["rouge_l"]
    assert 0 <= rouge["low"] <= rouge["mean"] <= rouge["high"] <= 1 and rouge["n"] > 0
    assert 0 < graders["chrf"]["mean"] < 1  # real texts, neither identical nor disjoint
    assert graders["tool_calls"]["n"] >= 1  # the teacher called the tool on some
    assert set(report["by_tag"]) == {"team=search", "team=support"}
    assert report["latency_ms"]["student"]["n"] == report["total"]
    assert report["output_tokens"]["teacher"]["median"] > 0
    assert report["worst"] and report["worst"][0]["teacher"]["role"] == "assistant"
    assert report["verdict"]["passed"] is False
    assert report["verdict"]["reasons"][0].startswith("rouge_l: mean")

    listed = invoke(["eval", "list", "--database", str(db)])
    assert listed.output.count("\n") == 2 and report["id"] in listed.output
    shown = invoke(["eval", "show", report["id"], "--database", str(db)])
    assert "rouge_l" in shown.output and "worst examples" in shown.output
    assert "team=search" in shown.output
    other = json.loads(invoke(["eval", "list", "--json", "--database", str(db)]).output)
    second_id = next(item["id"] for item in other["data"] if item["id"] != report["id"])
    compared = invoke(["eval", "show", report["id"], "--compare", second_id, "--database", str(db)])
    assert "compare" in compared.output and "delta" in compared.output

    async def stored_items() -> int:
        async with SQLiteStore(db) as store:
            items, _ = await store.list_items("eval", report["id"], limit=1000)
            return len(items)

    assert asyncio.run(stored_items()) == report["total"]


def test_eval_and_judge_traffic_through_the_proxy_is_marked(start_proxy, mock_url, traffic):
    db = traffic
    with start_proxy(upstream=mock_url, database=str(db), flush_interval=0.02) as base:
        judge = {"type": "score_model", "name": "judge", "model": "gpt-4o"}
        result = invoke(["eval", "run", "--dataset", "qa", "--student-url", base + "/v1",
                         "--student-model", "gpt-4o-mini", "--grader", json.dumps(judge),
                         "--grader", '{"type": "text_similarity", "name": "fuzzy", '
                         '"evaluation_metric": "fuzzy_match"}',
                         "--judge-url", base + "/v1", "--judge-model", "gpt-4o", "--limit", "4",
                         "--json", "--database", str(db)])  # fmt: skip
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        deadline = time.monotonic() + 10
        while asyncio.run(_count(db)) < 24 + 4 + 8:  # 4 student calls, 2 judge calls each
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert report["judge"] is not None and report["graders"]["judge"]["n"] >= 0
    assert 1 <= report["graders"]["fuzzy"]["n"] <= 4  # None where the teacher called a tool

    async def sources() -> tuple[dict[str, int], dict[str, int]]:
        async with SQLiteStore(db) as store:
            page = await store.list_captures(CaptureFilter(), limit=100)
            counts: dict[str, int] = {}
            for item in page.items:
                key = item.record.tags.get("stillroom.source", "teacher")
                counts[key] = counts.get(key, 0) + 1
            dataset = await create_dataset(store, DatasetSpec("again", where=CaptureFilter()))
            return counts, dataset.rejected

    counts, rejected = asyncio.run(sources())
    assert counts == {"teacher": 24, "eval": 4, "judge": 8}
    assert rejected.get("not_teacher") == 12


def test_bad_eval_requests(traffic):
    where = ["--database", str(traffic)]
    not_json = traffic.parent / "graders.txt"
    not_json.write_text("rouge_l please")
    an_object = traffic.parent / "graders.json"
    an_object.write_text('{"type": "json_valid", "name": "j"}')
    for args, text in (
        (["--dataset", "qa", "--student-url", "http://127.0.0.1:9/v1", "--student-model", "m",
          "--graders-file", str(not_json)], f"--graders-file: {not_json} is not JSON"),
        (["--dataset", "qa", "--student-url", "http://127.0.0.1:9/v1", "--student-model", "m",
          "--graders-file", str(an_object)], "must hold a JSON list of grader objects"),
        (["--dataset", "nope", "--student-url", "http://127.0.0.1:9/v1", "--student-model", "m"],
         "no dataset named nope"),
        (["--dataset", "qa", "--student-url", "ftp://x", "--student-model", "m"],
         "base_url"),
        (["--dataset", "qa", "--student-url", "http://127.0.0.1:9/v1", "--student-model", "m",
          "--grader", '{"type": "nope", "name": "x"}'], "type"),
        (["--dataset", "qa", "--student-url", "http://127.0.0.1:9/v1", "--student-model", "m",
          "--threshold", "missing=0.5"], "missing"),
        (["--dataset", "qa", "--student-url", "http://127.0.0.1:9/v1", "--student-model", "m",
          "--threshold", "rouge_l"], "GRADER=MIN"),
    ):  # fmt: skip
        result = invoke(["eval", "run", *args, *where])
        assert result.exit_code in (1, 2) and text in result.output, result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    missing = invoke(["eval", "show", "eval-x", *where])
    assert missing.exit_code == 1 and "no eval eval-x" in missing.output


def test_an_unreachable_student_scores_zero_not_a_crash(traffic):
    result = invoke(["eval", "run", "--dataset", "qa", "--student-url", "http://127.0.0.1:9/v1",
                     "--student-model", "m", "--limit", "2", "--timeout", "2", "--json",
                     "--database", str(traffic)])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["errors"] == 2 and report["graders"]["rouge_l"]["mean"] == 0.0
    assert "student failed" in report["worst"][0]["error"]
