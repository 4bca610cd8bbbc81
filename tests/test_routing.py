"""Routes on the data path, for real: a teacher and a student (two `stillroom mock` servers)
behind `stillroom serve`, driven with the official SDK and raw HTTP.

Shadow (client bytes identical to the teacher's; pairs kept; never more student requests in
flight than the cap), canary (about the share asked, sticky per key), full (the student answers,
streams too), fallback when the student dies (no client error) and rollback, ineligible
requests, decisions recorded on captures, replicas seeing a change through the store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from proxy.mock import MockOptions, create_mock_app
from proxy.routing.decide import decide, ineligible, point, stable_key
from proxy.routing.router import check_answer
from proxy.routing.routes import RouteError, parse_route
from proxy.routing.service import RouteRefused, RouteService
from storage.query import CaptureFilter
from storage.sqlite import SQLiteStore
from tests._server import serve_in_thread

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}


def route_body(student_url: str, **extra) -> dict:
    body = {
        "name": "hello",
        "model": "gpt-4o-mini",
        "student": {"base_url": student_url + "/v1", "model": "student-1"},
        "mode": "off",
        "rollback": {"window_s": 60, "min_requests": 5, "max_fallback_rate": 0.5},
        "min_shadow_pairs": 0,
    }
    return body | extra


def run(coro):
    return asyncio.run(coro)


async def _with_service(db: Path, fn):
    async with SQLiteStore(db) as store:
        await store.migrate()
        return await fn(RouteService(store))


def put_route(db: Path, body: dict, *, force: bool = True) -> dict:
    async def go(service: RouteService) -> dict:
        try:
            await service.get(body["name"])
        except RouteRefused:
            mode = body.get("mode", "off")
            start = "shadow" if mode in ("canary", "full") else mode  # rollback returns there
            created = await service.create(body | {"mode": start})
            if mode == start:
                return created
        return await service.update(body["name"], body | {"force": force})

    return run(_with_service(db, go))


def items(db: Path, kind: str) -> list[dict]:
    async def go(service: RouteService) -> list[dict]:
        page = await service.events("hello", kind=kind, after=0, limit=1000)
        return page["data"]

    return run(_with_service(db, go))


def captures(db: Path) -> list:
    async def go() -> list:
        async with SQLiteStore(db) as store:
            page = await store.list_captures(CaptureFilter(), limit=500)
            return [item.record for item in page.items]

    return run(go())


@pytest.fixture
def student():
    with serve_in_thread(create_mock_app(MockOptions())) as url:
        yield url


def served_by(response) -> str:
    return response.headers.get("x-stillroom-served-by")


def test_shadow_keeps_client_bytes_and_pairs(start_proxy, mock_url, student, tmp_path):
    db = tmp_path / "r.db"
    put_route(db, route_body(student, mode="shadow", max_concurrency=2))
    direct = httpx.post(mock_url + "/v1/chat/completions", json=CHAT)
    with start_proxy(upstream=mock_url, database=str(db), flush_interval=0.02) as base:
        answers = [httpx.post(base + "/v1/chat/completions", json=CHAT) for _ in range(6)]
        deadline = time.monotonic() + 20
        while len(items(db, "shadow_pair")) < 6:
            assert time.monotonic() < deadline, items(db, "shadow_pair")
            time.sleep(0.1)
        deadline = time.monotonic() + 10  # the shadow worker reports twice a second
        while 'stillroom_shadow_requests_total{outcome="sent"} 6.0' not in (
            metrics := httpx.get(base + "/metrics").text
        ):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
        peak = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith('stillroom_shadow_in_flight_peak{route="hello"}')
        )
        assert 1 <= peak <= 2  # max_concurrency
        assert 'stillroom_route_mode{mode="shadow",route="hello"} 1.0' in metrics
        assert 'stillroom_shadow_requests_total{outcome="sent"} 6.0' in metrics
    for answer in answers:
        assert answer.status_code == 200 and answer.content == direct.content
        assert served_by(answer) == "teacher"
    pairs = items(db, "shadow_pair")
    assert all(p["error"] is None and p["scores"]["rouge_l"] is not None for p in pairs)
    assert all(p["student"]["role"] == "assistant" for p in pairs)
    tags = [record.tags for record in captures(db)]
    assert all("stillroom.served_by" not in t for t in tags)  # absent: the teacher
    assert all(t["stillroom.route_decision"] == "shadow" for t in tags)


def test_canary_is_sticky_and_near_the_share(start_proxy, mock_url, student, tmp_path):
    db = tmp_path / "r.db"
    put_route(db, route_body(student, mode="canary", percent=50))
    with start_proxy(upstream=mock_url, database=str(db)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-c", max_retries=0)
        first: dict[str, str] = {}
        request = client.close
        for n in range(40):
            raw = client.chat.completions.with_raw_response.create(**CHAT, user=f"user-{n}")
            first[f"user-{n}"] = served_by(raw)
        for n in range(0, 40, 3):
            raw = client.chat.completions.with_raw_response.create(**CHAT, user=f"user-{n}")
            assert served_by(raw) == first[f"user-{n}"]  # the same key, the same model
        request()
    students = sum(value == "student:hello" for value in first.values())
    assert 10 <= students <= 30, first
    assert set(first.values()) == {"teacher", "student:hello"}


def test_full_mode_streams_and_falls_back_then_rolls_back(start_proxy, mock_url, tmp_path):
    db = tmp_path / "r.db"
    with serve_in_thread(create_mock_app(MockOptions())) as student_url:
        put_route(db, route_body(student_url, mode="full", full_shadow_rate=0.0))
        settings = {"upstream": mock_url, "database": str(db), "routes_refresh": "0.1"}
        with start_proxy(**settings) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="sk-c", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(**CHAT)
            assert served_by(raw) == "student:hello"
            assert raw.parse().choices[0].message.content
            stream = client.chat.completions.create(**CHAT, stream=True)
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
            )
            assert text
            ineligible_answer = client.chat.completions.with_raw_response.create(**CHAT, n=2)
            assert served_by(ineligible_answer) == "teacher"
            client.close()
            student_url_dead = student_url
    # The student is gone: every request falls back, none fails, and the route rolls back.
    with start_proxy(upstream=mock_url, database=str(db), routes_refresh="0.1") as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-c", max_retries=0)
        for _ in range(8):
            raw = client.chat.completions.with_raw_response.create(**CHAT)
            assert raw.http_response.status_code == 200
            assert served_by(raw) == "teacher"
        client.close()
        deadline = time.monotonic() + 10
        while run(_with_service(db, lambda s: s.get("hello")))["mode"] == "full":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        deadline = time.monotonic() + 5  # counted once the rollback is written
        while 'stillroom_route_rollbacks_total{route="hello"} 1.0' not in (
            metrics := httpx.get(base + "/metrics").text
        ):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.05)
    route = run(_with_service(db, lambda s: s.get("hello")))
    assert route["mode"] == "shadow" and route["previous_mode"] == "full"
    events = [e["message"] for e in items(db, "event")]
    assert any(m.startswith("rolled back full → shadow") for m in events), events
    assert student_url_dead  # (the URL no longer answers)
    decisions = [r.tags.get("stillroom.route_decision", "") for r in captures(db)]
    assert any(d.startswith("fallback: student unreachable") for d in decisions), decisions
    assert sum(r.tags.get("stillroom.served_by") == "student:hello" for r in captures(db)) == 2


def test_a_change_reaches_a_running_replica(start_proxy, mock_url, student, tmp_path):
    db = tmp_path / "r.db"
    put_route(db, route_body(student, mode="off"))
    with start_proxy(upstream=mock_url, database=str(db), routes_refresh="0.1") as base:
        assert served_by(httpx.post(base + "/v1/chat/completions", json=CHAT)) is None
        put_route(db, route_body(student, mode="full", full_shadow_rate=0.0))  # "another replica"
        deadline = time.monotonic() + 5
        while served_by(httpx.post(base + "/v1/chat/completions", json=CHAT)) != "student:hello":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_promotion_needs_a_passing_eval_unless_forced(tmp_path, student):
    db = tmp_path / "r.db"

    async def go(service: RouteService) -> None:
        await service.create(route_body(student, mode="shadow"))
        with pytest.raises(RouteRefused) as refused:
            await service.update("hello", {"mode": "canary", "percent": 10})
        assert refused.value.code == "promotion_required" and "eval_id" in refused.value.message
        store = service.store
        student_ref = {"base_url": student + "/v1", "model": "student-1"}
        failing = {"passed": False, "reasons": ["rouge_l low"]}
        await store.put_document("eval", "eval-bad", {"student": student_ref, "verdict": failing})
        passing = {"passed": True}
        await store.put_document("eval", "eval-ok", {"student": student_ref, "verdict": passing})
        with pytest.raises(RouteRefused) as failed:
            await service.update("hello", {"mode": "canary", "percent": 10, "eval_id": "eval-bad"})
        assert "rouge_l low" in failed.value.message
        promoted = await service.update(
            "hello", {"mode": "canary", "percent": 10, "eval_id": "eval-ok"}
        )
        assert promoted["mode"] == "canary" and promoted["previous_mode"] == "shadow"
        with pytest.raises(RouteRefused) as stale:
            await service.update("hello", {"percent": 20, "version": 1})
        assert stale.value.status == 409
        down = await service.update("hello", {"mode": "off"})
        assert down["mode"] == "off"
        with pytest.raises(RouteRefused):
            await service.create(route_body(student))  # exists
        with pytest.raises(RouteRefused) as new_canary:
            await service.create(route_body(student, name="other", mode="canary", percent=5))
        assert new_canary.value.code == "promotion_required"

    run(_with_service(db, go))


# -- the pure parts -------------------------------------------------------------------------------


def test_route_validation():
    good = route_body("http://127.0.0.1:1")
    assert parse_route(good).mode == "off"
    for change, param in (
        ({"name": "bad name"}, "name"),
        ({"mode": "half"}, "mode"),
        ({"mode": "canary"}, "percent"),
        ({"percent": 101}, "percent"),
        ({"student": {"base_url": "ftp://x", "model": "m"}}, "student"),
        ({"student": {"base_url": "http://u:p@x/v1", "model": "m"}}, "student"),
        ({"student": {"base_url": "http://x/v1", "model": "m", "api_key": "sk-no"}}, "student"),
        ({"graders": [{"type": "nope", "name": "x"}]}, "graders"),
        ({"extra": 1}, "extra"),
    ):
        with pytest.raises(RouteError) as bad:
            parse_route(good | change)
        assert bad.value.param == param, change


def test_decisions():
    route = parse_route(route_body("http://s", mode="canary", percent=30, tools=["get_weather"]))
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    assert ineligible(route, CHAT) is None
    assert ineligible(route, CHAT | {"n": 3}) == "n > 1"
    assert ineligible(route, CHAT | {"tools": [tool]}) is None
    other = {"type": "function", "function": {"name": "delete_all"}}
    assert "unknown to the student" in ineligible(route, CHAT | {"tools": [other]})
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    assert ineligible(route, {"messages": [image]}) == "image_url content"
    long = {"messages": [{"role": "user", "content": "x" * 40_000}]}
    assert ineligible(route, long) == "prompt longer than max_prompt_chars"
    assert stable_key(CHAT | {"user": "u1"}, "fp") == "user:u1"
    assert stable_key(CHAT, "fp").startswith("fp:fp:Say hello.")
    share = sum(point("canary:x", f"k{n}") < 30 for n in range(10_000)) / 10_000
    assert 0.28 < share < 0.32
    picks = {decide(route, CHAT | {"user": f"u{n}"}, None).target for n in range(50)}
    assert picks == {"teacher", "student"}
    # shadow sampling: all, none, or a share that is the same for repeats of one request
    for rate, low, high in ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.25, 0.2, 0.3)):
        shadowing = parse_route(route_body("http://s", mode="shadow", shadow_rate=rate))
        users = [CHAT | {"user": f"u{n}"} for n in range(2_000)]
        sampled = [decide(shadowing, body, None).shadow for body in users]
        assert low <= sum(sampled) / len(sampled) <= high, rate
        assert sampled == [decide(shadowing, body, None).shadow for body in users]
    full = parse_route(route_body("http://s", mode="full", full_shadow_rate=1.0))
    assert decide(full, CHAT, None) == decide(full, CHAT, "fp")  # no key needed at rate 1
    assert decide(full, CHAT, None).shadow and decide(full, CHAT, None).target == "student"


def test_invalid_student_answers_fall_back():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": schema}}
    request = CHAT | {"tools": [tool]}

    def answer(message: dict) -> bytes:
        return orjson.dumps({"choices": [{"index": 0, "message": message}]})

    call = {"id": "c", "type": "function", "function": {"name": "get_weather"}}
    ok = call | {"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    assert check_answer(request, answer({"role": "assistant", "tool_calls": [ok]})) is None
    wrong = call | {"function": {"name": "get_weather", "arguments": '{"town": 1}'}}
    assert "break the tool's schema" in check_answer(
        request, answer({"role": "assistant", "tool_calls": [wrong]})
    )
    unknown = call | {"function": {"name": "rm", "arguments": "{}"}}
    assert "unknown tool" in check_answer(
        request, answer({"role": "assistant", "tool_calls": [unknown]})
    )
    json_request = CHAT | {"response_format": {"type": "json_object"}}
    assert "not JSON" in check_answer(json_request, answer({"role": "assistant", "content": "hi"}))
    assert check_answer(json_request, answer({"role": "assistant", "content": '{"a": 1}'})) is None
    assert "not a chat completion" in check_answer(CHAT, b"<html>")


def test_the_student_never_sees_the_clients_key(start_proxy, mock_url, tmp_path, monkeypatch):
    """The client's credential is for the teacher: the student gets its own key or none."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    seen: list[dict[str, str]] = []

    async def chat(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        body = await request.json()
        return JSONResponse({
            "id": "chatcmpl-s", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi"}}],
        })  # fmt: skip

    canary = "sk-client-canary-7f3e9b1c2d4a5e6f"
    monkeypatch.setenv("STUDENT_KEY_FOR_TEST", "sk-student-own-key")
    student_app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    db = tmp_path / "r.db"
    with serve_in_thread(student_app) as student_url:
        body = route_body(student_url, mode="full", full_shadow_rate=1.0)
        body["student"]["api_key_env"] = "STUDENT_KEY_FOR_TEST"
        put_route(db, body)
        with start_proxy(upstream=mock_url, database=str(db), flush_interval=0.02) as base:
            headers = {"Authorization": f"Bearer {canary}"}
            answer = httpx.post(base + "/v1/chat/completions", json=CHAT, headers=headers)
            assert served_by(answer) == "student:hello"
            deadline = time.monotonic() + 10
            while not items(db, "shadow_pair"):  # full mode asks the teacher on the side
                assert time.monotonic() < deadline
                time.sleep(0.05)
    assert len(seen) == 1
    pair = items(db, "shadow_pair")[0]
    assert pair["student"]["content"] == "hi" and pair["teacher"]["role"] == "assistant"
    decisions = sorted(r.tags["stillroom.route_decision"] for r in captures(db))
    assert decisions == ["full", "teacher_shadow"]
    teacher = next(r for r in captures(db) if r.tags["stillroom.route_decision"] != "full")
    assert "stillroom.served_by" not in teacher.tags and teacher.outcome == "completed"
    assert all(canary not in json_text for json_text in map(str, seen))
    assert all(h.get("authorization") == "Bearer sk-student-own-key" for h in seen)
    assert canary.encode() not in db.read_bytes()


def test_the_shadow_worker_gets_no_more_frames_than_it_has_room_for(tmp_path):
    """Credit-based flow control: with the student stuck at its cap, the proxy encodes and
    writes no more shadows than the worker's queue (and its waiting tasks) can hold; the rest
    are dropped before encoding and counted, and the worker itself drops none."""
    from proxy.routing.shadow_process import WORKER_QUEUE, ShadowProcess
    from tests.conftest import make_capture

    db = tmp_path / "shadow.db"
    run(_with_service(db, lambda service: asyncio.sleep(0)))  # migrated

    async def go() -> tuple[int, int, int, dict[str, int]]:
        hung: list[asyncio.StreamWriter] = []

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            hung.append(writer)  # reads nothing back: the student never answers

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        route = parse_route(
            route_body(f"http://127.0.0.1:{port}", mode="shadow", max_concurrency=1, timeout_s=60)
        )
        record = make_capture()
        request = orjson.loads(record.request_body)
        shadows = ShadowProcess(str(db), stop_timeout=1.0)
        offered = 0
        try:
            for _ in range(40):  # 2,000 shadows over about 2 s: the worker reports 10 times a s
                for _ in range(50):
                    shadows.submit(route, request, record)
                    offered += 1
                await asyncio.sleep(0.05)
            written = shadows.written
            await asyncio.sleep(0.3)  # the last report: the worker's own drops
            return offered, written, shadows.dropped, dict(shadows.peak_in_flight)
        finally:
            await shadows.stop()
            server.close()
            for writer in hung:
                writer.close()

    offered, written, dropped, peak = run(go())
    assert peak == {"hello": 1}  # the cap
    # The queue, plus what the worker's 16 tasks took out of it to wait for the cap.
    assert WORKER_QUEUE <= written <= WORKER_QUEUE + 16
    assert dropped == offered - written  # every other shadow dropped in the proxy, none lost


def test_the_callers_key_is_hashed_only_when_the_sticky_key_needs_it():
    canary = parse_route(route_body("http://s", mode="canary", percent=50))
    asked: list[int] = []

    def fingerprint() -> str:
        asked.append(1)
        return "fp"

    decide(canary, CHAT | {"user": "u1"}, fingerprint)
    assert asked == []  # the user field is the key
    decide(canary, CHAT, fingerprint)
    assert asked == [1]
    assert stable_key(CHAT, fingerprint) == stable_key(CHAT, "fp")
