"""`stillroom captures list|show|tag|delete` and `stillroom stats`, on a real SQLite file and
against a live server's admin API: the same output either way, the admin API's JSON, one-line
errors, and the admin token never printed."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import openai
import pytest
from click.testing import CliRunner

import proxy.cli_captures
from proxy.cli import cli
from storage.sqlite import SQLiteStore
from tests.conftest import make_capture

TOKEN = "cli-test-admin-token-0123456789abcdef"
BASE = 1_700_000_000.0


def chat(prompt: str, answer: str, **overrides):
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    response = {
        "id": "chatcmpl-" + "".join(c for c in prompt.lower() if c.isalnum())[:12],
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
    }
    fields = {
        "request_body": json.dumps(request).encode(),
        "response_body": json.dumps(response).encode(),
        "response": response,
        "response_id": response["id"],
    }
    fields.update(overrides)
    return make_capture(**fields)


def responses_call(prompt: str, answer: str, response_id: str, previous: str | None, **overrides):
    request = {"model": "gpt-4o-mini", "input": prompt}
    if previous:
        request["previous_response_id"] = previous
    response = {
        "id": response_id,
        "object": "response",
        "status": "completed",
        "model": "gpt-4o-mini-2024-07-18",
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": answer}],
            }
        ],
    }
    return make_capture(
        endpoint="responses",
        path="/v1/responses",
        request_body=json.dumps(request).encode(),
        response_body=json.dumps(response).encode(),
        response=response,
        response_id=response_id,
        previous_response_id=previous,
        tags={},
        **overrides,
    )


def records():
    tool_answer = {
        "id": "chatcmpl-tool",
        "object": "chat.completion",
        "model": "gpt-4.1",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"q":"Oslo"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    return [
        chat(
            "Summarise the quarterly report",
            "Revenue grew.",
            created_at=BASE,
            tags={"task": "summarize", "team": "search"},
        ),
        chat(
            "Classify this ticket",
            "",
            created_at=BASE + 60,
            tags={"task": "classify"},
            outcome="upstream_error",
            status=500,
            error="upstream answered 500",
        ),
        chat(
            "What is the weather in Oslo?",
            "",
            created_at=BASE + 120,
            tags={"task": "summarize"},
            returned_model="gpt-4.1",
            requested_model="gpt-4.1",
            has_tool_calls=True,
            response=tool_answer,
            response_body=json.dumps(tool_answer).encode(),
            response_id="chatcmpl-tool",
        ),
        responses_call(
            "Tell me a story", "Once upon a time", "resp_1", None, created_at=BASE + 180
        ),
        responses_call(
            "And then?", "They lived happily", "resp_2", "resp_1", created_at=BASE + 240
        ),
        make_capture(
            endpoint="embeddings",
            path="/v1/embeddings",
            requested_model="text-embedding-3-small",
            returned_model="text-embedding-3-small",
            request_body=b'{"model":"text-embedding-3-small","input":"vectors please"}',
            response_body=b"",
            response={"object": "list", "model": "text-embedding-3-small"},
            response_id=None,
            tags={"task": "embed"},
            created_at=BASE + 86_400,
        ),
    ]


@pytest.fixture
def db(tmp_path):
    """A migrated capture database holding ``records()``; ids in insertion order."""
    path = tmp_path / "captures.db"
    rows = records()

    async def write():
        async with SQLiteStore(str(path)) as store:
            await store.migrate()
            await store.write_batch(rows)

    asyncio.run(write())
    return path, [r.id for r in rows]


@pytest.fixture
def served(db, start_proxy, mock_url):
    """A live `stillroom serve` with the admin API on, over the same database file."""
    with start_proxy(upstream=mock_url, database=str(db[0]), admin_token=TOKEN) as base:
        yield base


def invoke(args, env=None, input=None):
    result = CliRunner().invoke(cli, args, env=env or {}, input=input, prog_name="stillroom")
    assert TOKEN not in result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture(params=["local", "remote"])
def run(request, db):
    """``run(*args)``: the command on the database file, or through the live server."""
    if request.param == "local":
        extra, env = ["--database", str(db[0])], {}
    else:
        extra, env = ["--url", request.getfixturevalue("served")], {"STILLROOM_ADMIN_TOKEN": TOKEN}

    def go(*args, input=None):
        return invoke([*args, *extra], env=env, input=input)

    return go


def ok_json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def listed(run, *args) -> list[str]:
    return [c["id"] for c in ok_json(run("captures", "list", "--json", *args))["data"]]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    return f"http://127.0.0.1:{port}"


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# -- list ----------------------------------------------------------------------------------------


def test_list_table_shows_each_capture_newest_first(run, db):
    _, ids = db
    result = run("captures", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "CREATED", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == ids[::-1]
    assert "Summarise the quarterly report" in result.stdout  # the preview
    assert "task=summarize, team=search" in result.stdout
    assert "2023-11-14 22:13:20" in result.stdout  # created, UTC
    assert "upstream_error" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tag", "task:summarize"], [2, 0]),
        (["--tag", "task:summarize", "--tag", "team:search"], [0]),
        (["--model", "gpt-4.1"], [2]),
        (["--endpoint", "responses"], [4, 3]),
        (["--outcome", "upstream_error"], [1]),
        (["--status", "500"], [1]),
        (["--has-tool-calls"], [2]),
        (["--since", "2023-11-15"], [5]),
        (["--until", str(BASE + 61)], [1, 0]),
        (["--search", "quarterly"], [0]),
        (["--where", "tag=task:classify"], [1]),
        (["--where", "endpoint=embeddings", "--where", "excluded=false"], [5]),
        (["--feedback", "none", "--included", "--endpoint", "chat/completions"], [2, 1, 0]),
    ],
)
def test_list_filters(run, db, args, expected):
    _, ids = db
    assert listed(run, *args) == [ids[i] for i in expected]


def test_list_pages_with_after_and_order(run, db):
    _, ids = db
    page = ok_json(run("captures", "list", "--json", "--limit", "4"))
    assert set(page) == {"object", "data", "first_id", "last_id", "has_more"}
    assert page["object"] == "list" and page["has_more"] is True
    assert page["first_id"] == ids[5] and page["last_id"] == ids[2]
    rest = ok_json(run("captures", "list", "--json", "--limit", "4", "--after", page["last_id"]))
    assert [c["id"] for c in rest["data"]] == [ids[1], ids[0]] and rest["has_more"] is False
    assert listed(run, "--order", "asc", "--limit", "2") == ids[:2]
    table = run("captures", "list", "--limit", "1")
    assert f"more: --after {ids[5]}" in table.stdout
    assert run("captures", "list", "--tag", "task:none").stdout.strip() == "no captures"


# -- show ----------------------------------------------------------------------------------------


def test_show_prints_prompt_answer_tags_and_tool_calls(run, db):
    _, ids = db
    result = run("captures", "show", ids[0])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"capture {ids[0]}")
    assert "Summarise the quarterly report" in out and "Revenue grew." in out
    assert "task=summarize, team=search" in out and "[user]" in out
    tool = run("captures", "show", ids[2]).stdout
    assert 'call get_weather({"q":"Oslo"})' in tool


def test_show_responses_capture_has_its_conversation(run, db):
    _, ids = db
    detail = ok_json(run("captures", "show", "--json", ids[4]))
    assert detail["conversation"]["capture_ids"] == [ids[3], ids[4]]
    assert detail["conversation"]["complete"] is True
    assert detail["request"]["json"]["input"] == "And then?"
    text = run("captures", "show", ids[4]).stdout
    assert "Conversation (2 captures, complete)" in text and ids[3] in text
    assert "They lived happily" in text


# -- tag -----------------------------------------------------------------------------------------


def test_tag_one_capture(run, db):
    _, ids = db
    result = run(
        "captures", "tag", ids[0], "--add", "reviewed=yes", "--remove", "team",
        "--feedback", "1", "--note", "good summary", "--exclude", "--json",
    )  # fmt: skip
    updated = ok_json(result)
    assert updated["id"] == ids[0]
    assert updated["tags"] == {"task": "summarize", "reviewed": "yes"}
    assert updated["curation"]["feedback"] == {"score": 1.0, "note": "good summary"}
    assert updated["curation"]["excluded"] is True
    assert listed(run, "--feedback", "positive") == [ids[0]]
    assert listed(run, "--excluded") == [ids[0]]
    text = run("captures", "tag", ids[0], "--include", "--clear-feedback")
    assert text.exit_code == 0, text.output
    assert text.stdout.strip() == (
        f"{ids[0]}  tags: reviewed=yes, task=summarize  feedback: -  excluded: no"
    )
    assert listed(run, "--feedback", "any") == []


def test_tag_several_ids_and_an_unknown_one(run, db):
    _, ids = db
    missing = "01900000-0000-7000-8000-000000000000"
    result = run("captures", "tag", ids[1], missing, ids[2], "--add", "batch=7")
    assert result.exit_code == 1
    assert f"Error: no capture {missing}" in result.output
    assert listed(run, "--tag", "batch:7") == [ids[2], ids[1]]


def test_tag_by_filter(run, db):
    _, ids = db
    result = run("captures", "tag", "--where", "tag=task:summarize", "--add", "reviewed=yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "updated 2 captures"
    assert listed(run, "--tag", "reviewed:yes") == [ids[2], ids[0]]
    refused = run("captures", "tag", "--add", "x=1")
    assert "give capture ids, or --where" in one_error_line(refused, 2)
    everything = ok_json(run("captures", "tag", "--all", "--exclude", "--json"))
    assert everything == {"object": "capture.bulk_update", "updated": 6}


# -- delete --------------------------------------------------------------------------------------


def test_delete_by_id_and_by_filter(run, db):
    _, ids = db
    result = run("captures", "delete", ids[0], "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "deleted 1 capture"
    gone = run("captures", "show", ids[0])
    assert one_error_line(gone, 1) == f"Error: no capture {ids[0]}"
    bulk = ok_json(run("captures", "delete", "--where", "endpoint=responses", "--yes", "--json"))
    assert bulk == {"object": "capture.bulk_delete", "deleted": 2}
    assert listed(run) == [ids[5], ids[2], ids[1]]
    again = run("captures", "delete", ids[0], "--yes")
    assert again.exit_code == 1 and f"no capture {ids[0]}" in again.output
    assert ok_json(run("captures", "delete", "--all", "--yes", "--json"))["deleted"] == 3
    assert listed(run) == []


def test_delete_needs_confirmation(run, db, monkeypatch):
    _, ids = db
    refused = run("captures", "delete", ids[0])
    assert "pass --yes" in one_error_line(refused, 1)
    monkeypatch.setattr(proxy.cli_captures, "_is_interactive", lambda: True)
    declined = run("captures", "delete", "--where", "tag=task:summarize", input="n\n")
    assert declined.exit_code == 1 and "Delete 2 captures for good?" in declined.output
    assert len(listed(run)) == 6
    accepted = run("captures", "delete", ids[0], input="y\n")
    assert accepted.exit_code == 0 and "deleted 1 capture" in accepted.stdout
    assert len(listed(run)) == 5


# -- stats ---------------------------------------------------------------------------------------


def test_stats(run, db):
    data = ok_json(run("stats", "--json"))
    assert data["object"] == "stats" and data["captures"] == 6
    assert data["by_endpoint"] == {"chat/completions": 3, "responses": 2, "embeddings": 1}
    assert data["by_outcome"]["upstream_error"] == 1
    assert data["by_tag"]["task"]["summarize"] == 2
    assert data["by_day"] == {"2023-11-14": 5, "2023-11-15": 1}
    assert data["store_bytes"] > 0
    assert ok_json(run("stats", "--json", "--tag", "task:summarize"))["captures"] == 2
    text = run("stats").stdout
    assert "captures       6" in text and "task=summarize" in text and "2023-11-15" in text


# -- the admin API's JSON, either way ------------------------------------------------------------


def test_json_output_is_the_admin_apis(db, served):
    path, ids = db
    local, remote = ["--database", str(path)], ["--url", served]
    env = {"STILLROOM_ADMIN_TOKEN": TOKEN}
    admin = httpx.Client(base_url=served, headers={"Authorization": f"Bearer {TOKEN}"})
    with admin:
        api_list = admin.get("/admin/captures", params={"tag": "task:summarize", "limit": 1}).json()
        api_show = admin.get(f"/admin/captures/{ids[4]}").json()
        api_tool = admin.get(f"/admin/captures/{ids[2]}").json()
        api_stats = admin.get("/admin/stats").json()
    for extra in (local, remote):
        page = ["captures", "list", "--json", "--tag", "task:summarize", "--limit", "1", *extra]
        assert ok_json(invoke(page, env)) == api_list
        assert ok_json(invoke(["captures", "show", ids[4], "--json", *extra], env)) == api_show
        assert ok_json(invoke(["captures", "show", ids[2], "--json", *extra], env)) == api_tool
        stats = ok_json(invoke(["stats", "--json", *extra], env))
        assert {**stats, "store_bytes": 0} == {**api_stats, "store_bytes": 0}


def test_real_captures_through_the_proxy(start_proxy, mock_url, tmp_path):
    path = tmp_path / "live.db"
    settings = {"database": str(path), "admin_token": TOKEN, "flush_interval": 0.02}
    with start_proxy(upstream=mock_url, **settings) as base:
        tags = {"X-Stillroom-Tags": "task=demo"}
        client = openai.OpenAI(
            base_url=base + "/v1", api_key="sk-cli-test", max_retries=0, default_headers=tags
        )
        with client:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Name three rivers"}]
            )
            first = client.responses.create(model="gpt-4o-mini", input="Start a story")
            follow = client.responses.with_raw_response.create(
                model="gpt-4o-mini", input="Go on", previous_response_id=first.id
            )
        capture_id = follow.headers["x-stillroom-capture-id"]
        remote = ["--url", base]
        env = {"STILLROOM_ADMIN_TOKEN": TOKEN}
        detail = None
        for _ in range(250):  # the writer flushes every 20 ms
            result = invoke(["captures", "show", capture_id, "--json", *remote], env)
            if result.exit_code == 0:
                detail = json.loads(result.stdout)
                if len(detail["conversation"]["capture_ids"]) == 2:
                    break
            time.sleep(0.02)
        assert detail is not None and detail["conversation"]["complete"] is True
        table = invoke(["captures", "list", "--tag", "task:demo", *remote], env)
        assert table.exit_code == 0 and "Name three rivers" in table.stdout
        local = invoke(["captures", "list", "--tag", "task:demo", "--database", str(path)])
        assert local.stdout == table.stdout


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["captures", "list", "--tag", "nocolon"], "tag must look like key:value"),
        (["captures", "list", "--where", "colour=red"], "unknown filter 'colour'"),
        (["captures", "list", "--where", "nothing"], "--where takes NAME=VALUE"),
        (["captures", "list", "--since", "yesterday"], "since must be unix seconds or an ISO"),
        (["captures", "list", "--where", "has_tool_calls=yes"], "must be true or false"),
        (["captures", "list", "--outcome", "fine"], "outcome must be one of"),
        (["captures", "list", "--limit", "0"], "limit must be an integer 1-1000"),
        (["captures", "list", "--order", "up"], "order must be asc or desc"),
        (["captures", "list", "--after", "nope"], "--after must be a capture id"),
        (["stats", "--status", "99"], "status must be an HTTP status 100-599"),
        (["captures", "show", "123"], "ID must be a capture id"),
        (["captures", "tag", "--all"], "nothing to change"),
        (["captures", "tag", "--all", "--feedback", "2"], "score must be a number from -1 to 1"),
        (["captures", "tag", "--all", "--feedback", "good"], "--feedback must be a number"),
        (["captures", "tag", "--all", "--note", "x"], "--note goes with --feedback"),
        (["captures", "tag", "--all", "--add", "novalue"], "--add takes KEY=VALUE"),
        (["captures", "tag", "--all", "--add", "bad key=1"], "add_tags keys must be"),
        (["captures", "delete", "--yes"], "give capture ids, or --where"),
        (["captures", "delete", "--where", "model=x", "--all", "--yes", "--where", "y"], "NAME="),
    ],
)
@pytest.mark.parametrize("where", ["local", "remote"])
def test_bad_input_is_one_line_and_exit_2(db, where, args, message):
    """Checked before anything is opened: the remote form points at a port nobody listens on."""
    extra = ["--database", str(db[0])] if where == "local" else ["--url", closed_port_url()]
    result = invoke([*args, *extra], {"STILLROOM_ADMIN_TOKEN": TOKEN})
    assert message in one_error_line(result, 2)


def test_ids_and_filters_do_not_mix(db):
    path, ids = db
    result = invoke(["captures", "delete", ids[0], "--all", "--yes", "--database", str(path)])
    assert "not both" in one_error_line(result, 2)


def test_missing_database_is_an_error_and_is_not_created(tmp_path):
    path = tmp_path / "nowhere.db"
    result = invoke(["captures", "list", "--database", str(path)])
    assert f"no database at {path}" in one_error_line(result, 1)
    assert not path.exists()
    env_result = invoke(["stats"], env={"STILLROOM_DATABASE": str(path)})
    assert f"no database at {path}" in one_error_line(env_result, 1)


def test_unmigrated_database_asks_for_migrate(tmp_path):
    path = tmp_path / "blank.db"
    path.touch()
    result = invoke(["captures", "list", "--database", str(path)])
    assert "stillroom db migrate" in one_error_line(result, 1)


def test_wrong_token_and_unreachable_server(served):
    wrong = invoke(["stats", "--url", served, "--admin-token", "x" * 40])
    assert "refused the admin token (401)" in one_error_line(wrong, 1)
    assert "x" * 40 not in wrong.output
    url = closed_port_url()
    down = invoke(["captures", "list", "--url", url, "--admin-token", TOKEN])
    assert f"cannot reach {url}" in one_error_line(down, 1)


def test_url_needs_a_token_and_no_database_flag(served, db):
    no_token = invoke(["captures", "list", "--url", served])
    assert "admin token" in one_error_line(no_token, 2)
    both = invoke(
        ["stats", "--url", served, "--database", str(db[0])], {"STILLROOM_ADMIN_TOKEN": TOKEN}
    )
    assert "not both" in one_error_line(both, 2)
    bad = invoke(["stats", "--url", "ftp://host"], {"STILLROOM_ADMIN_TOKEN": TOKEN})
    assert "--url must be an http://" in one_error_line(bad, 2)
    env_db = invoke(
        ["stats", "--url", served], {"STILLROOM_ADMIN_TOKEN": TOKEN, "STILLROOM_DATABASE": "x"}
    )
    assert env_db.exit_code == 0, env_db.output


def test_admin_api_off_is_a_clear_error(start_proxy, mock_url, db):
    with start_proxy(upstream=mock_url, database=str(db[0])) as base:
        result = invoke(["captures", "show", db[1][0], "--url", base, "--admin-token", TOKEN])
    assert "is the admin API on?" in one_error_line(result, 1)


def test_a_search_fts5_cannot_parse_is_bad_input(run):
    result = run("captures", "list", "--search", '"unbalanced')
    assert one_error_line(result, 2)


def test_bulk_filters_with_numbers_and_booleans(run, db):
    _, ids = db
    args = ["--where", "status=500", "--where", "has_tool_calls=false", "--where", "excluded=false"]
    result = run("captures", "tag", *args, "--add", "triage=yes", "--json")
    assert ok_json(result) == {"object": "capture.bulk_update", "updated": 1}
    assert listed(run, "--tag", "triage:yes") == [ids[1]]


def test_curation_shows_in_show_and_list(run, db, tmp_path):
    _, ids = db
    corrected = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Billing"}}]}
    path = tmp_path / "fix.json"
    path.write_text(json.dumps(corrected))
    edit = ["--feedback", "-0.5", "--note", "wrong", "--exclude", "--corrected-response", str(path)]
    assert run("captures", "tag", ids[1], *edit).exit_code == 0
    text = run("captures", "show", ids[1]).stdout
    assert '-0.5 "wrong"' in text and "yes (kept out of training)" in text
    assert "upstream answered 500" in text and "curated" in text
    assert "Corrected answer (export prefers it):\n    Billing" in text
    row = next(line for line in run("captures", "list").stdout.splitlines() if ids[1] in line)
    assert "upstream_error - x" in row
    cleared = ok_json(run("captures", "tag", ids[1], "--clear-corrected", "--json"))
    assert cleared["curation"]["corrected_response"] is None
    piped = run("captures", "tag", ids[1], "--corrected-response", "-", "--json", input="{}")
    assert ok_json(piped)["curation"]["corrected_response"] == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--feedback", "1", "--clear-feedback"], "not both"),
        (["--corrected-response", "x.json", "--clear-corrected"], "not both"),
        (["--corrected-response", "/nonexistent/fix.json"], "cannot read /nonexistent/fix.json"),
        (["--corrected-response", "-"], "is not JSON"),
        (["--corrected-response", "LIST"], "must hold a JSON object"),
    ],
)
def test_bad_edits(db, tmp_path, args, message):
    listing = tmp_path / "list.json"
    listing.write_text("[]")
    args = [str(listing) if a == "LIST" else a for a in args]
    result = invoke(["captures", "tag", db[1][0], *args, "--database", str(db[0])], input="nope")
    assert message in one_error_line(result, 2)


def test_database_that_cannot_be_used(tmp_path):
    postgres = invoke(["stats", "--database", "postgresql://db.invalid/stillroom"])
    assert "postgresql://db.invalid/stillroom: postgres:" in one_error_line(postgres, 1)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    result = invoke(["stats", "--database", str(junk)])
    assert str(junk) in one_error_line(result, 1)


def test_url_with_credentials_is_refused():
    result = invoke(["stats", "--url", "http://user:pw@host:1", "--admin-token", TOKEN])
    assert "must not carry credentials" in one_error_line(result, 2)
    assert "pw" not in result.output


@pytest.mark.parametrize(
    ("answer", "message", "code"),
    [
        (httpx.Response(200, text="<html>"), "answered 200: the answer is not a JSON object", 1),
        (httpx.Response(503, json={"error": {"message": "store\n down"}}), "503: store down", 1),
        (httpx.Response(500, text="oops"), "answered 500", 1),
        (httpx.Response(400, json={"error": {"message": "bad filter"}}), "bad filter", 2),
        (httpx.ReadTimeout("slow"), "did not answer in time", 1),
    ],
)
def test_remote_failures_are_one_line(answer, message, code):
    from proxy._capture_source import CommandFailed, RemoteSource

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def go():
        async with RemoteSource(
            "http://server", TOKEN, transport=httpx.MockTransport(handler)
        ) as source:
            await source.stats({})

    with pytest.raises(CommandFailed) as caught:
        asyncio.run(go())
    assert message in caught.value.message and caught.value.exit_code == code
    assert TOKEN not in caught.value.message


# -- text for people ---------------------------------------------------------------------------


def test_text_of_messages_answers_and_previews():
    from proxy import _capture_text as text

    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}, "raw"]
    assert text.content_text(parts) == "look\n[image]\nraw"
    assert text.content_text({"odd": 1}) == '{"odd": 1}' and text.content_text(None) == ""
    responses = {
        "json": {
            "instructions": "Be kind.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "output": "sunny"},
                "loose text",
            ],
        }
    }
    assert text.request_messages({"request": responses}) == [
        ("instructions", "Be kind."),
        ("user", "Weather?"),
        ("assistant", "call get_weather({})"),
        ("tool", "sunny"),
        ("input", "loose text"),
    ]
    assert text.request_messages({"request": {"text": "not json"}}) == [("request", "not json")]
    assert text.request_messages({"request": {"base64": "AA=="}}) == []
    legacy = {"request": {"json": {"prompt": "Once"}}, "response": {"choices": [{"text": " upon"}]}}
    assert text.preview_of(legacy) == "Once"
    assert text.answer_lines(legacy["response"]) == [" upon"]
    embedding = {"object": "list", "data": [{"embedding": [0.1, 0.2]}]}
    assert text.answer_lines(embedding) == ["[1 embeddings of 2 dimensions]"]
    assert text.answer_lines("nope") == [] and text.answer_lines({"choices": ["x"]}) == []
    only_answer = {"request": {"json": {}}, "response": {"output": [{"type": "message"}]}}
    assert text.preview_of(only_answer) == ""
    system_only = {"request": {"json": {"messages": [{"role": "system", "content": "S"}]}}}
    assert text.preview_of(system_only) == "S"
    chat_answer = {
        "request": {"json": {}},
        "response": {"choices": [{"message": {"content": "A"}}]},
    }
    assert text.preview_of(chat_answer) == "A"


def test_text_is_safe_for_a_terminal_and_tables_fit():
    from proxy import _capture_text as text

    assert text.clean("red\x1b[31m\tok\n") == "red\\x1b[31m\tok\n"
    assert text.one_line("a\nb   c", 4) == "a b…"
    capture = {"id": "x", "created_at": None, "usage": {}, "tags": {}, "curation": {}}
    wide = text.captures_table([capture], {"x": "p" * 200}, 100)
    assert all(len(line) <= 100 for line in wide.splitlines())
    assert "-" in wide.splitlines()[1]  # no time, no tokens, no tags
    assert text.format_time("soon") == "-"


def test_stats_text_of_an_empty_store():
    from proxy import _capture_text as text

    empty = {"captures": 0, "tokens": {}, "store_bytes": None, "by_tag": {}, "by_day": {}}
    out = text.stats_text(empty)
    assert "by model: -" in out and "by tag: -" in out and "by day (UTC): -" in out
    assert "store size     -" in out
    assert "5.0 GiB" in text.stats_text({"store_bytes": 5 * 1024**3})
    assert "12 B" in text.stats_text({"store_bytes": 12})


def test_a_missing_dataset_over_url_says_so(served):
    """A 404 the admin API gives for a thing it names is its message, not the admin-off hint."""
    result = invoke(
        ["eval", "run", "--url", served, "--admin-token", TOKEN, "--dataset", "nope",
         "--student-url", "http://127.0.0.1:9/v1", "--student-model", "s"]
    )  # fmt: skip
    line = one_error_line(result, 1)
    assert "nope" in line and "dataset" in line, line
    assert "is the admin API on?" not in line
