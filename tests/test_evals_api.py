"""`/admin/evals` on a running `stillroom serve`: start an eval (answered at once, run in the
background), follow it to its report, page its graded examples, list and delete evals; bad
bodies, unknown datasets and ids; at most four at once; running evals are marked interrupted at
shutdown; and `stillroom eval run|show|list --url` end to end. The student is a second
`stillroom mock` (or a socket that never answers)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema_rs
import openai
import pytest
from click.testing import CliRunner

from proxy.admin.openapi import openapi_document
from proxy.cli import cli
from proxy.mock import MockOptions, create_mock_app
from storage.datasets import DatasetSpec, create_dataset
from storage.query import CaptureFilter
from storage.sqlite import SQLiteStore
from tests._admin import AUTH, TOKEN, WRONG
from tests._server import serve_in_thread

EVAL_ID = re.compile(r"eval-[0-9a-f]{32}")
UNKNOWN = "eval-" + "0" * 32


@pytest.fixture
def traffic(start_proxy, mock_url, tmp_path) -> Path:
    """12 captures made through the proxy (tagged by team), and dataset ``qa`` with holdout."""
    db = tmp_path / "evals.db"
    with (
        start_proxy(upstream=mock_url, database=str(db), flush_interval=0.02) as base,
        openai.OpenAI(base_url=base + "/v1", api_key="sk-t", max_retries=0) as client,
    ):
        for n in range(12):
            team = "search" if n % 2 else "support"
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Question number {n}?"}],
                extra_headers={"X-Stillroom-Tags": f"team={team}"},
            )

    async def make() -> None:
        async with SQLiteStore(db) as store:
            assert await store.count() == 12  # the writer drained at shutdown
            spec = DatasetSpec("qa", where=CaptureFilter(), validation=0.0, holdout=0.5)
            await create_dataset(store, spec)

    asyncio.run(make())
    return db


@pytest.fixture
def student() -> Iterator[str]:
    with serve_in_thread(create_mock_app(MockOptions())) as url:
        yield url + "/v1"


@pytest.fixture
def silent_student() -> Iterator[str]:
    """A student that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def serve(start_proxy, mock_url, db: Path):
    return start_proxy(upstream=mock_url, database=str(db), admin_token=TOKEN, flush_interval=0.02)


def eval_body(student_url: str, **extra) -> dict:
    return {"dataset": "qa", "student": {"base_url": student_url, "model": "student-1"}} | extra


def conforms(answer: dict, schema: str) -> dict:
    """``answer``, once it validates against the published component ``schema``."""
    components = openapi_document()["components"]
    ref = {"$ref": f"#/components/schemas/{schema}", "components": components}
    jsonschema_rs.validator_for(ref).validate(answer)
    return answer


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def finished(http: httpx.Client, eval_id: str) -> dict:
    deadline = time.monotonic() + 20
    while True:
        current = http.get(f"/admin/evals/{eval_id}")
        assert current.status_code == 200, current.text
        if current.json()["status"] != "running":
            return conforms(current.json(), "Eval")
        assert time.monotonic() < deadline, current.json()
        time.sleep(0.05)


def invoke(args: list[str]):
    result = CliRunner().invoke(cli, args, prog_name="stillroom")
    assert "Traceback" not in result.output, result.output
    return result


def test_start_follow_page_list_and_delete(start_proxy, mock_url, traffic, student):
    with (
        serve(start_proxy, mock_url, traffic) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        empty = http.get("/admin/evals").json()
        assert empty == {
            "object": "list",
            "data": [],
            "first_id": None,
            "last_id": None,
            "has_more": False,
        }
        body = conforms(eval_body(student, thresholds={"rouge_l": 0.99}), "EvalSpec")
        created = http.post("/admin/evals", json=body)
        assert created.status_code == 201, created.text
        started = conforms(created.json(), "Eval")
        assert EVAL_ID.fullmatch(started["id"]) and started["object"] == "eval"
        assert started["status"] == "running" and started["done"] == 0
        assert started["total"] >= 3 and started["spec"]["dataset"] == "qa"
        assert started["student"] == {
            "base_url": student,
            "model": "student-1",
            "api_key_env": None,
        }

        report = finished(http, started["id"])
        assert report["status"] == "completed", report
        assert report["done"] == report["total"] == started["total"]
        assert report["created_at"] == started["created_at"] <= report["finished_at"]
        assert set(report["graders"]) == {"exact_match", "tool_calls", "json_valid", "rouge_l",
                                          "chrf"}  # fmt: skip
        assert 0 < report["graders"]["chrf"]["mean"] < 1 and report["errors"] == 0
        assert report["latency_ms"]["student"]["n"] == report["total"]
        assert report["verdict"]["passed"] is False
        assert report["verdict"]["reasons"][0].startswith("rouge_l: mean")
        assert report["worst"][0]["teacher"]["role"] == "assistant"

        path = f"/admin/evals/{report['id']}/items"
        first = conforms(http.get(path, params={"limit": 2}).json(), "EvalItemList")
        assert first["object"] == "list" and first["has_more"] and len(first["data"]) == 2
        item = first["data"][0]
        assert item["type"] == "example" and item["student"]["role"] == "assistant"
        assert item["tags"]["team"] in ("search", "support") and "rouge_l" in item["scores"]
        rest = http.get(path, params={"after": first["last_id"], "limit": 1000}).json()
        assert not rest["has_more"]
        ids = [i["id"] for i in first["data"] + rest["data"]]
        assert ids == sorted(ids) and len(ids) == report["total"]

        second = http.post("/admin/evals", json=eval_body(student, limit=1, name="one"))
        assert second.status_code == 201 and second.json()["total"] == 1
        assert finished(http, second.json()["id"])["total"] == 1
        listed = conforms(http.get("/admin/evals").json(), "EvalList")
        assert [e["id"] for e in listed["data"]] == [second.json()["id"], report["id"]]
        assert listed["data"][1] == report and listed["first_id"] == second.json()["id"]
        page = http.get("/admin/evals", params={"limit": 1}).json()
        assert page["has_more"] and page["last_id"] == second.json()["id"]
        after = http.get("/admin/evals", params={"after": page["last_id"]}).json()
        assert [e["id"] for e in after["data"]] == [report["id"]] and not after["has_more"]

        deleted = http.delete(f"/admin/evals/{report['id']}")
        assert conforms(deleted.json(), "EvalDeleted") == {
            "object": "eval.deleted",
            "id": report["id"],
            "deleted": True,
        }
        for method, where in (("GET", ""), ("DELETE", ""), ("GET", "/items")):
            gone = error_of(http.request(method, f"/admin/evals/{report['id']}{where}"), 404)
            assert gone["param"] == "id" and gone["code"] == "not_found"
        assert [e["id"] for e in http.get("/admin/evals").json()["data"]] == [second.json()["id"]]

    async def items_left() -> int:
        async with SQLiteStore(traffic) as store:
            items, _ = await store.list_items("eval", report["id"], limit=1000)
            return len(items)

    assert asyncio.run(items_left()) == 0


def test_bad_requests(start_proxy, mock_url, traffic, student):
    with (
        serve(start_proxy, mock_url, traffic) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        for body, param in (
            ([1], None),
            ({"student": {"base_url": student, "model": "m"}}, "dataset"),
            (eval_body(student, colour="blue"), "colour"),
            (eval_body("ftp://x/v1"), "student"),
            ({"dataset": "qa"}, "student"),
            (eval_body(student, split="test"), "split"),
            (eval_body(student, graders=[{"type": "nope", "name": "x"}]), "graders[0].type"),
            (eval_body(student, thresholds={"missing": 0.5}), "thresholds.missing"),
            (eval_body(student, timeout_s=0), "timeout_s"),
            (eval_body(student, concurrency=65), "concurrency"),
        ):
            error = error_of(http.post("/admin/evals", json=body), 400)
            assert error["param"] == param, (body, error)
        not_json = error_of(http.post("/admin/evals", content=b"{"), 400)
        assert "JSON" in not_json["message"]
        for name in ("nope", "Not A Name"):
            unknown = eval_body(student) | {"dataset": name}
            missing = error_of(http.post("/admin/evals", json=unknown), 404)
            assert missing["param"] == "dataset" and missing["code"] == "not_found"
        empty = error_of(
            http.post("/admin/evals", json=eval_body(student, split="validation")), 400
        )
        assert empty["code"] == "dataset_empty" and empty["param"] == "split"
        assert http.get("/admin/evals").json()["data"] == []  # nothing was started

        for tail in (UNKNOWN, "eval-x", "eval-" + "A" * 32, f"{UNKNOWN}/items"):
            assert error_of(http.get(f"/admin/evals/{tail}"), 404)["param"] == "id"
        assert error_of(http.delete("/admin/evals/nope"), 404)["param"] == "id"
        assert error_of(http.get("/admin/evals", params={"limit": 0}), 400)["param"] == "limit"
        assert error_of(http.get("/admin/evals", params={"after": "x"}), 400)["param"] == "after"
        assert error_of(http.get("/admin/evals", params={"colour": "1"}), 400)["param"] == "colour"
        items = f"/admin/evals/{UNKNOWN}/items"
        assert error_of(http.get(items, params={"after": -1}), 400)["param"] == "after"
        assert error_of(http.get(f"/admin/evals/{UNKNOWN}", params={"x": 1}), 400)["param"] == "x"
        assert error_of(http.put("/admin/evals"), 405)["code"] == "method_not_allowed"

        for headers in ({}, {"Authorization": f"Bearer {WRONG}"}):
            for method, path in (("GET", "/admin/evals"), ("POST", "/admin/evals")):
                refused = httpx.request(
                    method, base + path, headers=headers, json=eval_body(student)
                )
                assert refused.status_code == 401
                assert refused.headers["www-authenticate"] == "Bearer"


def test_four_at_once_running_ones_stay_and_shutdown_interrupts_them(
    start_proxy, mock_url, traffic, silent_student
):
    body = eval_body(silent_student, timeout_s=60, concurrency=2)
    with (
        serve(start_proxy, mock_url, traffic) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        started = []
        for _ in range(4):
            created = http.post("/admin/evals", json=body)
            assert created.status_code == 201, created.text
            started.append(created.json()["id"])
        busy = error_of(http.post("/admin/evals", json=body), 429)
        assert busy["code"] == "too_many_evals"
        current = conforms(http.get(f"/admin/evals/{started[0]}").json(), "Eval")
        assert current["status"] == "running" and current["done"] == 0
        running = error_of(http.delete(f"/admin/evals/{started[0]}"), 409)
        assert running["code"] == "eval_running"
        shutdown_began = time.monotonic()
    assert time.monotonic() - shutdown_began < 15  # cancelled, not waited out

    async def statuses() -> dict[str, tuple[str, str | None]]:
        async with SQLiteStore(traffic) as store:
            docs, _ = await store.list_documents("eval", limit=10)
            return {doc.id: (doc.body["status"], doc.body.get("error")) for doc in docs}

    assert asyncio.run(statuses()) == {eval_id: ("failed", "interrupted") for eval_id in started}


def test_a_run_that_fails_says_why(start_proxy, mock_url, traffic, student):
    with (
        serve(start_proxy, mock_url, traffic) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        # The dataset still counts its examples, but their captures are gone: the check passes
        # and the run finds nothing to ask.
        wiped = http.post("/admin/captures/delete", json={"all": True})
        assert wiped.json()["deleted"] == 12
        created = http.post("/admin/evals", json=eval_body(student))
        assert created.status_code == 201, created.text
        failed = finished(http, created.json()["id"])
        assert failed["status"] == "failed" and "finished_at" in failed
        assert failed["error"] == "dataset qa has no holdout examples to evaluate"
        assert http.delete(f"/admin/evals/{failed['id']}").status_code == 200

        where = ["--url", base, "--admin-token", TOKEN]
        ran = invoke(["eval", "run", "--dataset", "qa", "--student-url", student,
                      "--student-model", "m", *where])  # fmt: skip
        assert ran.exit_code == 1, ran.output
        assert "failed: dataset qa has no holdout examples" in ran.output


def test_eval_cli_over_the_admin_api(start_proxy, mock_url, traffic, student):
    with serve(start_proxy, mock_url, traffic) as base:
        where = ["--url", base, "--admin-token", TOKEN]
        ran = invoke(["eval", "run", "--dataset", "qa", "--student-url", student,
                      "--student-model", "student-1", "--threshold", "rouge_l=0.99",
                      "--name", "remote", "--json", *where])  # fmt: skip
        assert ran.exit_code == 0, ran.output
        report = json.loads(ran.output)
        assert report["status"] == "completed" and report["spec"]["name"] == "remote"
        assert report["verdict"]["passed"] is False and report["graders"]["rouge_l"]["n"] > 0
        checked = invoke(["eval", "run", "--dataset", "qa", "--student-url", student,
                          "--student-model", "student-1", "--threshold", "rouge_l=0.99",
                          "--check", *where])  # fmt: skip
        assert checked.exit_code == 1 and "FAILED" in checked.output

        shown = invoke(["eval", "show", report["id"], *where])
        assert shown.exit_code == 0 and "rouge_l" in shown.output and "team=" in shown.output
        listed = json.loads(invoke(["eval", "list", "--json", *where]).output)
        assert len(listed["data"]) == 2 and listed["data"][1]["id"] == report["id"]
        text = invoke(["eval", "list", *where]).output
        assert text.count("\n") == 2 and f"{report['id']}  failed" in text

        missing = invoke(["eval", "show", UNKNOWN, *where])
        assert missing.exit_code == 1 and f"no eval {UNKNOWN}" in missing.output
        bad = invoke(["eval", "run", "--dataset", "qa", "--student-url", "ftp://x",
                      "--student-model", "m", *where])  # fmt: skip
        assert bad.exit_code != 0 and "base_url" in bad.output
        refused = invoke(["eval", "list", "--url", base, "--admin-token", WRONG])
        assert refused.exit_code == 1 and "401" in refused.output


def test_an_abandoned_running_eval_can_be_deleted(start_proxy, mock_url, traffic):
    """A server killed mid-run leaves its eval "running"; once it has saved no progress for two
    student timeouts and a minute, it can be deleted."""
    import asyncio
    import sqlite3

    from storage.sqlite import SQLiteStore

    body = {"id": "eval-" + "0" * 32, "status": "running", "spec": {"timeout_s": 5}}

    async def plant() -> None:
        async with SQLiteStore(traffic) as store:
            await store.put_document("eval", body["id"], body)

    asyncio.run(plant())
    with (
        serve(start_proxy, mock_url, traffic) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        error_of(http.delete(f"/admin/evals/{body['id']}"), 409)  # fresh: maybe alive
        with sqlite3.connect(traffic) as db:
            db.execute("UPDATE documents SET updated_at = updated_at - 71 WHERE id = ?",
                       (body["id"],))  # fmt: skip
        deleted = http.delete(f"/admin/evals/{body['id']}")
        assert deleted.status_code == 200, deleted.text
        assert http.get(f"/admin/evals/{body['id']}").status_code == 404
