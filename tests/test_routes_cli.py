"""`stillroom routes list|show|create|set|delete|events|shadow`, on the database (RouteService
on the store) and through a running server's admin API; `--json` for scripts, one `Error:`
line for failures, and the admin token never printed."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from click.testing import CliRunner

from proxy.cli import cli
from proxy.mock import MockOptions, create_mock_app
from storage.sqlite import SQLiteStore
from tests._admin import TOKEN, WRONG
from tests._server import serve_in_thread

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
STUDENT = "http://127.0.0.1:9/v1"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "routes.db"

    async def migrate() -> None:
        async with SQLiteStore(path) as store:
            await store.migrate()

    asyncio.run(migrate())
    return path


def invoke(args, env=None, input=None):
    result = CliRunner().invoke(cli, args, env=env or {}, input=input, prog_name="stillroom")
    assert TOKEN not in result.output
    assert "Traceback" not in result.output
    return result


def ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def ok_json(result):
    return json.loads(ok(result))


def create_args(name="hello", student=STUDENT, *extra):
    return ["routes", "create", "--name", name, "--model", "gpt-4o-mini",
            "--student-url", student, "--student-model", "student-1", *extra]  # fmt: skip


def test_on_the_database(db):
    where = ["--database", str(db)]
    route = ok_json(
        invoke(create_args("hello", STUDENT, "--mode", "shadow", "--tag", "task=hi", "--tools",
                           "a, b", "--shadow-rate", "0.5", "--max-concurrency", "2", "--timeout",
                           "5", "--threshold", "rouge_l=0.5", "--min-shadow-pairs", "0",
                           "--json", *where))
    )  # fmt: skip
    assert route["object"] == "route" and route["version"] == 1 and route["mode"] == "shadow"
    assert route["tags"] == {"task": "hi"} and route["tools"] == ["a", "b"]
    assert route["shadow_rate"] == 0.5 and route["max_concurrency"] == 2
    assert route["timeout_s"] == 5 and route["thresholds"] == {"rouge_l": 0.5}
    assert route["student"] == {"base_url": STUDENT, "model": "student-1", "api_key_env": None}

    listed = ok(invoke(["routes", "list", *where]))
    assert listed.startswith("hello ") and "gpt-4o-mini [task=hi]" in listed and "(v1)" in listed
    assert ok_json(invoke(["routes", "list", "--json", *where]))["data"] == [route]
    shown = ok(invoke(["routes", "show", "hello", *where]))
    assert shown.splitlines()[0] == "hello  shadow  version 1"
    assert f"student     student-1 at {STUDENT}" in shown
    assert "tools       a, b" in shown and "rouge_l >= 0.5" in shown
    assert "shadow pairs 0 (0 student failures)" in shown
    assert ok_json(invoke(["routes", "show", "hello", "--json", *where])) == route

    refused = invoke(["routes", "set", "hello", "--mode", "canary", "--percent", "10", *where])
    assert refused.exit_code == 2 and "needs eval_id" in refused.output
    assert refused.output.startswith("Error: ") and refused.output.count("\n") == 1
    promoted = invoke(["routes", "set", "hello", "--mode", "canary", "--percent", "10", "--force",
                       *where])  # fmt: skip
    assert ok(promoted) == "hello: canary 10% (version 2)\n"
    moved = ok_json(invoke(["routes", "set", "hello", "--student-model", "student-2", "--any-tools",
                            "--json", *where]))  # fmt: skip
    assert moved["student"] == {"base_url": STUDENT, "model": "student-2", "api_key_env": None}
    assert moved["tools"] is None and moved["mode"] == "canary" and moved["version"] == 3
    stale = invoke(["routes", "set", "hello", "--percent", "20", "--expect-version", "2", *where])
    assert stale.exit_code == 1 and "is at version 3, not 2" in stale.output

    events = ok(invoke(["routes", "events", "hello", *where])).splitlines()
    assert events[0].endswith("created in mode shadow")
    assert events[1].endswith("mode shadow → canary at 10% (forced, without evidence)")
    assert events[2].endswith("changed student, tools")
    page = ok_json(invoke(["routes", "events", "hello", "--limit", "1", "--json", *where]))
    assert page["has_more"] and page["data"][0]["object"] == "route.event"
    rest = ok_json(invoke(["routes", "events", "hello", "--after", str(page["last_id"]), "--json",
                           *where]))  # fmt: skip
    assert len(rest["data"]) == 2 and not rest["has_more"]

    shadow = ok(invoke(["routes", "shadow", "hello", *where]))
    assert shadow == "shadow pairs 0 (0 student failures)\n"
    empty = ok_json(invoke(["routes", "shadow", "hello", "--json", *where]))
    assert empty["data"] == [] and empty["summary"]["pairs"] == 0

    assert ok(invoke(["routes", "delete", "hello", *where])) == "deleted route hello\n"
    gone = invoke(["routes", "show", "hello", *where])
    assert gone.exit_code == 1 and gone.output == "Error: no route named hello\n"
    assert ok(invoke(["routes", "list", *where])) == "no routes\n"


def test_create_from_a_file(db, tmp_path):
    spec = {
        "name": "from-file",
        "model": "gpt-4o-mini",
        "student": {"base_url": STUDENT, "model": "s", "api_key_env": "STUDENT_KEY"},
        "graders": [{"type": "text_similarity", "name": "chrf", "evaluation_metric": "chrf"}],
        "rollback": {"window_s": 30, "min_requests": 5, "max_fallback_rate": 0.1},
    }
    path = tmp_path / "route.json"
    path.write_text(json.dumps(spec))
    where = ["--database", str(db)]
    route = ok_json(
        invoke(["routes", "create", "--file", str(path), "--student-model", "s2", "--json", *where])
    )
    assert route["student"] == {"base_url": STUDENT, "model": "s2", "api_key_env": "STUDENT_KEY"}
    assert route["graders"] == spec["graders"] and route["rollback"]["window_s"] == 30
    shown = ok(invoke(["routes", "show", "from-file", *where]))
    assert "(key from $STUDENT_KEY)" in shown and "over 10% fallbacks in 30s" in shown
    piped = invoke(["routes", "set", "from-file", "--file", "-", "--json", *where],
                   input=json.dumps({"percent": 5, "tags": {"team": "a"}}))  # fmt: skip
    assert ok_json(piped)["tags"] == {"team": "a"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["show", "bad name"], 2, "is not a route name"),
        (["show", "nope"], 1, "no route named nope"),
        (["delete", "nope"], 1, "no route named nope"),
        (["events", "nope"], 1, "no route named nope"),
        (["set", "nope", "--percent", "5"], 1, "no route named nope"),
        (["set", "hello"], 2, "nothing to change"),
        (["set", "hello", "--tools", "a", "--any-tools"], 2, "not both"),
        (["set", "hello", "--percent", "500"], 2, "percent must be a number from 0 to 100"),
        (["set", "hello", "--eval", "x" * 200, "--mode", "full"], 2, "eval_id must name"),
        (["create", "--name", "x", "--model", "m", "--student-model", "s"], 2,
         "--student-url is required"),
        (["create", "--model", "m", "--student-url", STUDENT, "--student-model", "s"], 2,
         "--name is required"),
        ([*create_args("hello")[1:]], 1, "a route named hello exists"),
        ([*create_args("x", "ftp://s")[1:]], 2, "student.base_url must be an http(s) URL"),
        ([*create_args("x", STUDENT, "--tag", "novalue")[1:]], 2, "--tag takes KEY=VALUE"),
        ([*create_args("x", STUDENT, "--threshold", "a=b")[1:]], 2, "is not a number"),
        ([*create_args("x", STUDENT, "--shadow-rate", "2")[1:]], 2, "shadow_rate must be"),
        ([*create_args("x", STUDENT, "--file", "/nonexistent.json")[1:]], 2, "cannot read"),
    ],
)  # fmt: skip
def test_errors_are_one_line(db, args, code, message):
    ok(invoke([*create_args("hello"), "--database", str(db)]))
    result = invoke(["routes", *args, "--database", str(db)])
    assert result.exit_code == code, result.output
    assert message in result.output and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: ")


def test_no_database(tmp_path):
    result = invoke(["routes", "list", "--database", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "no database at" in result.output


def test_through_a_running_server(db, start_proxy, mock_url):
    settings = {"upstream": mock_url, "database": str(db), "admin_token": TOKEN,
                "flush_interval": 0.02, "routes_refresh": 60}  # fmt: skip
    env = {"STILLROOM_ADMIN_TOKEN": TOKEN}
    with (
        serve_in_thread(create_mock_app(MockOptions())) as student,
        start_proxy(**settings) as base,
    ):
        url = ["--url", base]

        def ask() -> str | None:
            answer = httpx.post(base + "/v1/chat/completions", json=CHAT)
            assert answer.status_code == 200
            return answer.headers.get("x-stillroom-served-by")

        route = ok_json(invoke(create_args("hello", student + "/v1", "--mode", "shadow",
                                           "--json", *url), env))  # fmt: skip
        assert route["mode"] == "shadow"
        assert ask() == "teacher"  # the server's table reloaded at once
        assert ask() == "teacher"
        deadline = time.monotonic() + 20
        while (page := ok_json(invoke(["routes", "shadow", "hello", "--json", *url], env)))[
            "summary"
        ]["pairs"] < 2:
            assert time.monotonic() < deadline, page
            time.sleep(0.05)
        text = ok(invoke(["routes", "shadow", "hello", *url], env))
        assert text.startswith("shadow pairs 2 (0 student failures)\n")
        assert "rouge_l" in text and "95% CI [" in text and page["data"][0]["capture_id"] in text
        assert "shadow pairs 2" in ok(invoke(["routes", "show", "hello", *url], env))

        refused = invoke(["routes", "set", "hello", "--mode", "full", *url], env)
        assert refused.exit_code == 2 and "needs eval_id" in refused.output
        assert refused.output.count("\n") == 1
        ok(invoke(["routes", "set", "hello", "--mode", "full", "--force", *url], env))
        assert ask() == "student:hello"
        events = ok(invoke(["routes", "events", "hello", *url], env))
        assert "mode shadow → full (forced, without evidence)" in events
        # the same JSON from the server and from its database file
        remote = ok_json(invoke(["routes", "list", "--json", *url], env))
        local = ok_json(invoke(["routes", "list", "--json", "--database", str(db)]))
        assert remote == local and remote["data"][0]["mode"] == "full"

        exists = invoke([*create_args("hello", student + "/v1"), *url], env)
        assert exists.exit_code == 1 and "a route named hello exists" in exists.output
        missing = invoke(["routes", "show", "nope", *url], env)
        assert missing.exit_code == 1 and missing.output == "Error: no route named nope\n"
        bad = invoke([*create_args("x", "ftp://s"), *url], env)
        assert bad.exit_code == 2 and "student.base_url" in bad.output
        wrong = invoke(["routes", "list", *url], {"STILLROOM_ADMIN_TOKEN": WRONG})
        assert wrong.exit_code == 1 and "refused the admin token (401)" in wrong.output
        assert WRONG not in wrong.output
        no_token = invoke(["routes", "list", *url])
        assert no_token.exit_code == 2 and "needs the server's admin token" in no_token.output

        assert ok(invoke(["routes", "delete", "hello", *url], env)) == "deleted route hello\n"
        assert ask() is None


def test_capture_off_server_says_so(start_proxy, mock_url, tmp_path):
    settings = {"upstream": mock_url, "database": str(tmp_path / "x.db"), "admin_token": TOKEN,
                "capture": "off"}  # fmt: skip
    with start_proxy(**settings) as base:
        result = invoke(["routes", "list", "--url", base], {"STILLROOM_ADMIN_TOKEN": TOKEN})
    assert result.exit_code == 1 and "answered 503" in result.output
    assert result.output.count("\n") == 1
