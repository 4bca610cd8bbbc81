"""`/admin/routes` on a running `stillroom serve`: create, list, show, change (with versions and
the promotion rule), delete, events and shadow pairs; a change made here applies to the next
`/v1` request (the student is a second `stillroom mock`); errors are OpenAI-shaped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from proxy.mock import MockOptions, create_mock_app
from storage.sqlite import SQLiteStore
from tests._admin import AUTH, TOKEN, WRONG
from tests._server import serve_in_thread

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}


@pytest.fixture
def student():
    with serve_in_thread(create_mock_app(MockOptions())) as url:
        yield url


def route_body(student_url: str, **extra) -> dict:
    body = {
        "name": "hello",
        "model": "gpt-4o-mini",
        "student": {"base_url": student_url + "/v1", "model": "student-1"},
        "min_shadow_pairs": 0,
    }
    return body | extra


def serve(start_proxy, mock_url, db: Path, **extra):
    return start_proxy(
        upstream=mock_url, database=str(db), admin_token=TOKEN, flush_interval=0.02, **extra
    )


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def served_by(response: httpx.Response) -> str | None:
    return response.headers.get("x-stillroom-served-by")


def test_create_list_get_patch_delete(start_proxy, mock_url, student, tmp_path):
    with (
        serve(start_proxy, mock_url, tmp_path / "r.db") as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        assert http.get("/admin/routes").json() == {"object": "list", "data": []}
        created = http.post("/admin/routes", json=route_body(student, tags={"task": "hi"}))
        assert created.status_code == 201, created.text
        route = created.json()
        assert route["object"] == "route" and route["version"] == 1
        assert route["mode"] == "off" and route["tags"] == {"task": "hi"}
        assert route["student"] == {
            "base_url": student + "/v1",
            "model": "student-1",
            "api_key_env": None,
        }
        assert http.get("/admin/routes/hello").json() == route
        other = http.post("/admin/routes", json=route_body(student, name="alpha", mode="shadow"))
        assert other.status_code == 201
        names = [r["name"] for r in http.get("/admin/routes").json()["data"]]
        assert names == ["alpha", "hello"]

        changed = http.patch("/admin/routes/hello", json={"shadow_rate": 0.5, "version": 1})
        assert changed.status_code == 200, changed.text
        assert changed.json()["shadow_rate"] == 0.5 and changed.json()["version"] == 2
        stale = error_of(http.patch("/admin/routes/hello", json={"percent": 5, "version": 1}), 409)
        assert stale["code"] == "version_conflict"
        assert http.get("/admin/routes/hello").json()["percent"] == 0

        deleted = http.delete("/admin/routes/hello")
        assert deleted.json() == {"object": "route.deleted", "name": "hello", "deleted": True}
        for method in ("GET", "DELETE"):
            gone = error_of(http.request(method, "/admin/routes/hello"), 404)
            assert gone["param"] == "name" and gone["code"] == "not_found"
        gone = error_of(http.patch("/admin/routes/hello", json={"percent": 1}), 404)
        assert gone["param"] == "name"
        assert [r["name"] for r in http.get("/admin/routes").json()["data"]] == ["alpha"]


def test_promotion_needs_a_passing_eval_or_force(start_proxy, mock_url, student, tmp_path):
    db = tmp_path / "r.db"
    student_ref = {"base_url": student + "/v1", "model": "student-1"}

    async def seed() -> None:
        async with SQLiteStore(db) as store:
            await store.migrate()
            passing = {"student": student_ref, "verdict": {"passed": True}}
            await store.put_document("eval", "eval-ok", passing)
            failing = {"student": student_ref, "verdict": {"passed": False, "reasons": ["low"]}}
            await store.put_document("eval", "eval-bad", failing)

    asyncio.run(seed())
    with (
        serve(start_proxy, mock_url, db) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        canary_body = route_body(student, mode="canary", percent=5)
        canary = error_of(http.post("/admin/routes", json=canary_body), 400)
        assert canary["code"] == "promotion_required" and canary["param"] == "mode"
        assert (
            http.post("/admin/routes", json=route_body(student, mode="shadow")).status_code == 201
        )
        up = {"mode": "canary", "percent": 10}
        refused = error_of(http.patch("/admin/routes/hello", json=up), 400)
        assert refused["code"] == "promotion_required" and refused["param"] == "eval_id"
        missing = error_of(http.patch("/admin/routes/hello", json=up | {"eval_id": "nope"}), 400)
        assert missing["code"] == "promotion_required" and "no eval nope" in missing["message"]
        failed = error_of(http.patch("/admin/routes/hello", json=up | {"eval_id": "eval-bad"}), 400)
        assert "did not pass: low" in failed["message"]
        promoted = http.patch("/admin/routes/hello", json=up | {"eval_id": "eval-ok"})
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["mode"] == "canary" and promoted.json()["previous_mode"] == "shadow"
        forced = http.patch("/admin/routes/hello", json={"mode": "full", "force": True})
        assert forced.status_code == 200 and forced.json()["mode"] == "full"
        down = http.patch("/admin/routes/hello", json={"mode": "off"})
        assert down.json()["mode"] == "off"

        events = http.get("/admin/routes/hello/events").json()
        messages = [event["message"] for event in events["data"]]
        assert messages[0] == "created in mode shadow"
        assert messages[1].startswith("mode shadow → canary at 10% (eval eval-ok passed")
        assert messages[2] == "mode canary → full (forced, without evidence)"
        assert messages[3] == "mode full → off"
        first = events["data"][0]
        assert first["object"] == "route.event" and first["route"] == "hello"
        assert events["data"][2]["data"] == {"eval_id": None, "forced": True, "fields": ["mode"]}
        page = http.get("/admin/routes/hello/events", params={"limit": 2}).json()
        assert page["has_more"] and len(page["data"]) == 2
        rest = http.get("/admin/routes/hello/events", params={"after": page["last_id"]}).json()
        assert [e["message"] for e in rest["data"]] == messages[2:] and not rest["has_more"]


def test_a_route_applies_to_the_next_request(start_proxy, mock_url, student, tmp_path):
    with (
        serve(start_proxy, mock_url, tmp_path / "r.db", routes_refresh=60) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):

        def ask() -> str | None:
            answer = httpx.post(base + "/v1/chat/completions", json=CHAT)
            assert answer.status_code == 200
            return served_by(answer)

        assert ask() is None  # no route
        body = route_body(student, mode="shadow", full_shadow_rate=0.0)
        assert http.post("/admin/routes", json=body).status_code == 201
        assert ask() == "teacher"  # the table reloaded at once (the refresh is a minute away)
        full = http.patch("/admin/routes/hello", json={"mode": "full", "force": True})
        assert full.status_code == 200
        assert ask() == "student:hello"
        assert http.patch("/admin/routes/hello", json={"mode": "off"}).status_code == 200
        assert ask() is None
        assert http.patch("/admin/routes/hello", json={"mode": "full", "force": True}).is_success
        assert ask() == "student:hello"
        assert http.delete("/admin/routes/hello").status_code == 200
        assert ask() is None


def test_shadow_pairs_and_their_summary(start_proxy, mock_url, student, tmp_path):
    with (
        serve(start_proxy, mock_url, tmp_path / "r.db") as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        assert http.post("/admin/routes", json=route_body(student, mode="shadow")).is_success
        for _ in range(3):
            assert httpx.post(base + "/v1/chat/completions", json=CHAT).status_code == 200
        deadline = time.monotonic() + 20
        while len((page := http.get("/admin/routes/hello/shadow").json())["data"]) < 3:
            assert time.monotonic() < deadline, page
            time.sleep(0.05)
        summary = page["summary"]
        assert summary["pairs"] == 3 and summary["student_failures"] == 0
        rouge = summary["graders"]["rouge_l"]
        assert rouge["n"] == 3 and 0 <= rouge["low"] <= rouge["mean"] <= rouge["high"] <= 1
        pair = page["data"][0]
        assert pair["object"] == "route.shadow_pair" and pair["route"] == "hello"
        assert pair["error"] is None and pair["student"]["role"] == "assistant"
        assert pair["teacher"]["role"] == "assistant" and pair["capture_id"]
        assert set(pair["scores"]) == {"tool_calls", "rouge_l"}
        one = http.get("/admin/routes/hello/shadow", params={"limit": 1}).json()
        assert len(one["data"]) == 1 and one["has_more"] and one["summary"] == summary
        assert pair["student_capture_id"] is None  # shadow: the student's answer is not captured
        # events and shadow pairs are kept apart
        events = http.get("/admin/routes/hello/events").json()["data"]
        assert [e["message"] for e in events] == ["created in mode shadow"]
        # full mode: the student answers, the teacher is asked too, both are captured
        full = {"mode": "full", "force": True, "full_shadow_rate": 1.0}
        assert http.patch("/admin/routes/hello", json=full).is_success
        answer = httpx.post(base + "/v1/chat/completions", json=CHAT)
        assert served_by(answer) == "student:hello"
        while len((page := http.get("/admin/routes/hello/shadow").json())["data"]) < 4:
            assert time.monotonic() < deadline, page
            time.sleep(0.05)
        assert page["data"][3]["student_capture_id"] and page["summary"]["pairs"] == 4


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "hello", "student": {"base_url": "http://s/v1", "model": "m"}}, "model"),
        ({"name": "bad name", "model": "m", "student": {"base_url": "http://s/v1", "model": "m"}},
         "name"),
        ({"name": "x\n", "model": "m", "student": {"base_url": "http://s/v1", "model": "m"}},
         "name"),
        ({"name": "x", "model": "m", "student": {"base_url": "ftp://s", "model": "m"}}, "student"),
        ({"name": "x", "model": "m", "student": {"base_url": "http://[::1/v1", "model": "m"}},
         "student"),
        ({"name": "x", "model": "m", "student": {"base_url": "http://u:p@s/v1", "model": "m"}},
         "student"),
        ({"name": "x", "model": "m", "mode": "half",
          "student": {"base_url": "http://s/v1", "model": "m"}}, "mode"),
        ({"name": "x", "model": "m", "percent": 101,
          "student": {"base_url": "http://s/v1", "model": "m"}}, "percent"),
        ({"name": "x", "model": "m", "graders": [{"type": [], "name": "g"}],
          "student": {"base_url": "http://s/v1", "model": "m"}}, "graders"),
        ({"name": "x", "model": "m", "thresholds": {"g": 2},
          "student": {"base_url": "http://s/v1", "model": "m"}}, "thresholds"),
        ({"name": "x", "model": "m", "version": 1,
          "student": {"base_url": "http://s/v1", "model": "m"}}, "version"),
        ({"name": "x", "model": "m", "student": {"base_url": "http://s/v1", "model": "m",
                                                 "api_key_env": "KEY\n"}}, "student"),
    ],
)  # fmt: skip
def test_bad_create_bodies_name_the_field(start_proxy, mock_url, tmp_path, body, param):
    with (
        serve(start_proxy, mock_url, tmp_path / "r.db") as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        error = error_of(http.post("/admin/routes", json=body), 400)
        assert error["param"] == param and error["type"] == "invalid_request_error", error
        assert http.get("/admin/routes").json()["data"] == []


def test_errors(start_proxy, mock_url, student, tmp_path):
    with (
        serve(start_proxy, mock_url, tmp_path / "r.db") as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        for headers in ({}, {"Authorization": f"Bearer {WRONG}"}):
            for method, path in (("GET", "/admin/routes"), ("POST", "/admin/routes"),
                                 ("GET", "/admin/routes/hello/shadow")):  # fmt: skip
                refused = httpx.request(method, base + path, headers=headers, json={})
                assert refused.status_code == 401
                assert TOKEN not in refused.text
        assert http.post("/admin/routes", json=route_body(student)).status_code == 201
        exists = error_of(http.post("/admin/routes", json=route_body(student)), 409)
        assert exists["code"] == "route_exists"
        not_json = http.post(
            "/admin/routes", content=b"{", headers={"content-type": "application/json"}
        )
        assert error_of(not_json, 400)["code"] == "invalid_request"
        assert error_of(http.post("/admin/routes", json=[1]), 400)["param"] is None
        for patch, param in (
            ({"name": "other"}, "name"),
            ({"version": "1"}, "version"),
            ({"version": 0}, "version"),
            ({"force": "yes"}, "force"),
            ({"eval_id": 5}, "eval_id"),
            ({"mode": "canary"}, "percent"),
            ({"tags": {"": "x"}}, "tags"),
            ({"unknown": 1}, "unknown"),
        ):
            error = error_of(http.patch("/admin/routes/hello", json=patch), 400)
            assert error["param"] == param, (patch, error)
        for path in ("/admin/routes/bad%20name", "/admin/routes/-x/events"):
            assert error_of(http.get(path), 404)["param"] == "name"
        for params, param in (({"limit": 0}, "limit"), ({"after": -1}, "after"), ({"x": 1}, "x")):
            error = error_of(http.get("/admin/routes/hello/events", params=params), 400)
            assert error["param"] == param
        assert error_of(http.get("/admin/routes", params={"x": 1}), 400)["param"] == "x"
        assert http.put("/admin/routes/hello", json={}).status_code == 405
        assert http.get("/admin/routes/").status_code == 404
        # nothing changed through all that
        assert http.get("/admin/routes/hello").json()["version"] == 1


def test_without_capture_routes_are_unavailable(start_proxy, mock_url, tmp_path):
    with (
        serve(start_proxy, mock_url, tmp_path / "r.db", capture="off") as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        assert error_of(http.get("/admin/routes"), 503)["code"] == "store_unavailable"
        body = route_body("http://127.0.0.1:9")
        assert error_of(http.post("/admin/routes", json=body), 503)["code"] == "store_unavailable"


def test_the_openapi_document_describes_the_routes(start_proxy, mock_url, tmp_path):
    from proxy.admin._route_schemas import _GRADER_TYPES
    from proxy.evals.graders import _TYPES

    assert set(_GRADER_TYPES) == set(_TYPES)
    with (
        serve(start_proxy, mock_url, tmp_path / "r.db") as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        document = http.get("/admin/openapi.json").json()
    paths = document["paths"]
    assert set(paths["/admin/routes"]) == {"get", "post"}
    assert set(paths["/admin/routes/{name}"]) == {"parameters", "get", "patch", "delete"}
    assert "409" in paths["/admin/routes/{name}"]["patch"]["responses"]
    for schema in ("Route", "RouteSpec", "RoutePatch", "RouteEventList", "ShadowPairList"):
        assert schema in document["components"]["schemas"]
