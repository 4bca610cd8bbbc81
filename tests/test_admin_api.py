"""The admin API end to end: a real proxy in front of `stillroom mock`, captures made with the
official SDK, then browsed, curated and deleted over HTTP (docs/admin-api.md, T19 route walk)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from proxy.admin.openapi import openapi_document
from tests._admin import (
    AUTH,
    TOKEN,
    UNKNOWN_ID,
    WRONG,
    Admin,
    Seeded,
    make_captures,
    wait_for_captures,
)


@pytest.fixture
def admin(start_proxy, mock_url, tmp_path):
    db = tmp_path / "admin.db"
    with (
        start_proxy(
            upstream=mock_url, database=str(db), admin_token=TOKEN, flush_interval=0.02
        ) as base,
        httpx.Client(base_url=base, headers=AUTH, timeout=10) as http,
    ):
        yield Admin(base, http, db)


@pytest.fixture
def seeded(admin) -> Seeded:
    ids = make_captures(admin.base)
    wait_for_captures(admin, 8)
    return ids


def assert_error(response: httpx.Response, status: int, param: str | None = "-") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param != "-":
        assert error["param"] == param, error
    return error


# -- off / auth ----------------------------------------------------------------------------------


def route_table() -> list[tuple[str, str]]:
    """Every documented (method, path), with a real-looking capture id."""
    routes = []
    for path, item in openapi_document()["paths"].items():
        for method in ("get", "post", "patch", "delete"):
            if method in item:
                routes.append((method.upper(), path.replace("{id}", UNKNOWN_ID)))
    return routes


def route_walk() -> list[tuple[str, str]]:
    """The routes plus every spelling that must not slip past the bearer check (T19)."""
    walk = []
    for method, path in route_table():
        walk += [(method, path), ("HEAD", path), ("OPTIONS", path), (method, path + "/")]
        walk.append((method, "/" + path))  # //admin/...
        walk.append((method, path.replace("/admin/", "/admin%2F", 1)))
        walk.append((method, path.replace("/admin/", "/admin//", 1)))
    walk += [
        ("GET", "/admin"),
        ("GET", "/admin/"),
        ("GET", "/admin/nope"),
        ("PUT", "/admin/captures"),
        ("GET", "/admin/captures%2F" + UNKNOWN_ID),
        ("GET", "/admin/captures/%2e%2e/stats"),
    ]
    return walk


def test_admin_api_is_an_unknown_path_when_no_token_is_set(start_proxy, mock_url):
    with start_proxy(upstream=mock_url) as base, httpx.Client(base_url=base) as http:
        unknown = http.get("/nothing-here")
        assert_error(unknown, 404)
        for method, path in route_walk():
            for headers in ({}, AUTH):
                response = http.request(method, base + path, headers=headers)
                assert response.status_code == 404, (method, path)
                if method != "HEAD":
                    error = response.json()["error"]
                    assert (error["type"], error["code"]) == ("invalid_request_error", "not_found")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {WRONG}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": "Bearer"},
        {"Host": "localhost", "X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"},
        {"Cookie": f"token={TOKEN}", "X-Admin-Token": TOKEN},
    ],
    ids=["none", "wrong", "basic", "no-scheme", "longer", "shorter", "empty", "spoof", "elsewhere"],
)
def test_every_admin_route_needs_the_token(admin, headers):
    with httpx.Client(base_url=admin.base) as http:  # no default auth header
        for method, path in route_walk():
            response = http.request(method, admin.base + path, headers=headers, json={"all": True})
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"
            if method != "HEAD":
                assert_error(response, 401)
                assert TOKEN not in response.text
    assert admin.captures() == []  # nothing got through


def test_two_authorization_headers_are_refused(admin):
    with httpx.Client(base_url=admin.base) as http:
        headers = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {WRONG}")]
        assert http.get("/admin/captures", headers=headers).status_code == 401


def test_the_route_table_is_the_documented_one(admin):
    """With the token: documented methods are served, any other method is 405 (so no route
    exists that the OpenAPI document and the walk above do not know of)."""
    documented = openapi_document()["paths"]
    by_id = documented["/admin/captures/{id}"]
    for path, item in documented.items():
        concrete = path.replace("{id}", UNKNOWN_ID)
        for method in ("GET", "POST", "PATCH", "DELETE", "PUT"):
            response = admin.http.request(method, concrete, json={})
            if method.lower() in item:
                assert response.status_code != 405, (method, path)
            elif path.startswith("/admin/captures/") and method.lower() in by_id:
                assert_error(response, 404, "id")  # /admin/captures/update as a capture id
            else:
                assert_error(response, 405)
                assert "allow" in response.headers
    for method, path in route_walk():
        response = admin.http.request(method, admin.base + path, json={"all": False})
        assert response.status_code < 500, (method, path)
    assert admin.ok("GET", "/admin/openapi.json")["paths"].keys() == documented.keys()


def test_scheme_is_case_insensitive(admin):
    with httpx.Client(base_url=admin.base) as http:
        response = http.get("/admin/captures", headers={"Authorization": f"bearer {TOKEN}"})
        assert response.status_code == 200


# -- browsing ------------------------------------------------------------------------------------


def test_list_filters_over_real_captures(admin, seeded):
    everything = admin.captures()
    ids = [c["id"] for c in everything]
    assert len(ids) == 8 and ids == sorted(ids, reverse=True)  # newest first
    by_id = {c["id"]: c for c in everything}
    assert by_id[seeded.summarize_news]["tags"] == {"task": "summarize", "team": "search"}
    assert "request" not in by_id[seeded.summarize_news]  # the summary shape

    def found(**params: Any) -> set[str]:
        return {c["id"] for c in admin.captures(**params)}

    summarize = {seeded.summarize_news, seeded.tool_call, seeded.failed}
    assert found(tag="task:summarize") == summarize
    assert found(tag=["task:summarize", "team:search"]) == {seeded.summarize_news}
    assert found(tag="task:nothing") == set()
    assert found(endpoint="responses") == {seeded.first_response, seeded.follow_up}
    assert found(endpoint="embeddings") == {seeded.embedding}
    assert found(outcome="upstream_error") == {seeded.failed}
    assert found(status=500) == {seeded.failed}
    assert found(has_tool_calls="true") == {seeded.tool_call}
    assert seeded.tool_call not in found(has_tool_calls="false")
    nano = by_id[seeded.other_model]["model"]
    assert nano.startswith("gpt-4.1-nano") and found(model=nano) == {seeded.other_model}
    assert found(search="otters") == {seeded.summarize_news}
    assert found(search="penguins") == {seeded.translate}
    assert found(feedback="none") == set(ids) and found(feedback="any") == set()
    assert found(excluded="false") == set(ids)
    middle = by_id[ids[4]]["created_at"]
    assert found(since=middle) | found(until=middle) == set(ids)
    assert found(since="2000-01-01T00:00:00Z") == set(ids)
    assert found(until="2000-01-01") == set()


def test_pages_follow_the_cursor(admin, seeded):
    everything = [c["id"] for c in admin.captures()]
    for order, expected in (("desc", everything), ("asc", everything[::-1])):
        seen: list[str] = []
        after = None
        while True:
            params = {"limit": 3, "order": order, **({"after": after} if after else {})}
            page = admin.ok("GET", "/admin/captures", params=params)
            assert page["object"] == "list" and len(page["data"]) <= 3
            if page["data"]:
                assert page["first_id"] == page["data"][0]["id"]
                assert page["last_id"] == page["data"][-1]["id"]
            seen += [c["id"] for c in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert seen == expected
    default = admin.ok("GET", "/admin/captures")
    assert [c["id"] for c in default["data"]] == everything and default["has_more"] is False


def test_detail_has_the_whole_record_and_the_conversation(admin, seeded):
    chat = admin.ok("GET", f"/admin/captures/{seeded.summarize_news}")
    assert chat["id"] == seeded.summarize_news and chat["object"] == "capture"
    messages = chat["request"]["json"]["messages"]
    assert messages == [{"role": "user", "content": "Summarise the news about otters"}]
    assert chat["response"]["object"] == "chat.completion"
    assert chat["response_body"]["json"] == chat["response"]
    assert chat["response_content_type"].startswith("application/json")
    assert "conversation" not in chat
    follow = admin.ok("GET", f"/admin/captures/{seeded.follow_up}")
    conversation = follow["conversation"]
    assert conversation["capture_ids"] == [seeded.first_response, seeded.follow_up]
    assert conversation["complete"] is True and conversation["missing_response_id"] is None
    assert conversation["response_ids"][-1] == follow["response_id"]
    first = admin.ok("GET", f"/admin/captures/{seeded.first_response}")
    assert first["conversation"]["capture_ids"] == [seeded.first_response]
    failed = admin.ok("GET", f"/admin/captures/{seeded.failed}")
    assert failed["outcome"] == "upstream_error" and failed["status"] == 500


# -- curating ------------------------------------------------------------------------------------


def test_patch_tags_feedback_exclusion_and_correction(admin, seeded):
    path = f"/admin/captures/{seeded.summarize_news}"
    corrected = {"choices": [{"message": {"role": "assistant", "content": "Otters hold hands."}}]}
    body = {
        "add_tags": {"quality": "gold", "team": "ranking"},
        "remove_tags": ["task"],
        "feedback": {"score": 0.5, "note": "good, a bit long"},
        "excluded": True,
        "corrected_response": corrected,
    }
    updated = admin.ok("PATCH", path, json=body)
    assert updated["tags"] == {"quality": "gold", "team": "ranking"}
    curation = updated["curation"]
    assert curation["feedback"] == {"score": 0.5, "note": "good, a bit long"}
    assert curation["excluded"] is True and curation["corrected_response"] == corrected
    assert curation["updated_at"] is not None
    detail = admin.ok("GET", path)
    assert detail["curation"] == curation
    assert detail["response"]["object"] == "chat.completion"  # the teacher's answer is kept
    assert {c["id"] for c in admin.captures(feedback="positive")} == {seeded.summarize_news}
    assert {c["id"] for c in admin.captures(excluded="true")} == {seeded.summarize_news}
    assert {c["id"] for c in admin.captures(tag="quality:gold")} == {seeded.summarize_news}
    cleared = admin.ok(
        "PATCH", path, json={"feedback": None, "excluded": False, "corrected_response": None}
    )
    assert cleared["curation"]["feedback"] is None and cleared["curation"]["excluded"] is False
    assert cleared["curation"]["corrected_response"] is None
    negative = admin.ok("PATCH", path, json={"feedback": {"score": -1}})
    assert negative["curation"]["feedback"] == {"score": -1.0, "note": None}
    assert {c["id"] for c in admin.captures(feedback="negative")} == {seeded.summarize_news}


def test_bulk_update_needs_a_filter_or_all(admin, seeded):
    patch = {"add_tags": {"reviewed": "yes"}}
    refused = admin.http.post("/admin/captures/update", json={"patch": patch})
    assert_error(refused, 422, "filter")
    refused = admin.http.post("/admin/captures/update", json={"filter": {}, "patch": patch})
    assert_error(refused, 422, "filter")
    by_tag = admin.ok(
        "POST",
        "/admin/captures/update",
        json={"filter": {"tag": "task:summarize", "outcome": "completed"}, "patch": patch},
    )
    assert by_tag == {"object": "capture.bulk_update", "updated": 2}
    assert {c["id"] for c in admin.captures(tag="reviewed:yes")} == {
        seeded.summarize_news,
        seeded.tool_call,
    }
    typed = {"filter": {"has_tool_calls": True, "status": 200}, "patch": {"excluded": True}}
    assert admin.ok("POST", "/admin/captures/update", json=typed)["updated"] == 1
    everything = {"all": True, "patch": {"feedback": {"score": 1, "note": "ok"}}}
    assert admin.ok("POST", "/admin/captures/update", json=everything)["updated"] == 8
    assert len(admin.captures(feedback="positive")) == 8


def test_delete_then_404(admin, seeded):
    path = f"/admin/captures/{seeded.translate}"
    deleted = admin.ok("DELETE", path)
    assert deleted == {"object": "capture.deleted", "id": seeded.translate, "deleted": True}
    assert_error(admin.http.get(path), 404, "id")
    assert_error(admin.http.delete(path), 404, "id")
    assert_error(admin.http.patch(path, json={"excluded": True}), 404, "id")
    assert seeded.translate not in {c["id"] for c in admin.captures()}


def test_bulk_delete_needs_a_filter_or_all(admin, seeded):
    assert_error(admin.http.post("/admin/captures/delete", json={}), 422, "filter")
    assert_error(admin.http.post("/admin/captures/delete", json={"filter": {}, "all": False}), 422)
    by_filter = admin.ok(
        "POST", "/admin/captures/delete", json={"filter": {"tag": ["task:summarize"]}}
    )
    assert by_filter == {"object": "capture.bulk_delete", "deleted": 3}
    assert admin.captures(tag="task:summarize") == []
    assert_error(admin.http.get(f"/admin/captures/{seeded.tool_call}"), 404)
    rest = admin.ok("POST", "/admin/captures/delete", json={"all": True})
    assert rest["deleted"] == 5 and admin.captures() == []


def test_stats(admin, seeded):
    stats = admin.ok("GET", "/admin/stats")
    assert stats["object"] == "stats" and stats["captures"] == 8
    assert stats["by_endpoint"] == {
        "chat/completions": 5,
        "responses": 2,
        "embeddings": 1,
    }
    assert stats["by_outcome"] == {"completed": 7, "upstream_error": 1}
    assert stats["by_tag"]["task"] == {"summarize": 3, "translate": 1}
    assert sum(stats["by_day"].values()) == 8
    assert stats["tokens"]["input"] > 0 and stats["tokens"]["output"] > 0
    assert stats["store_bytes"] > 0 and stats["with_feedback"] == 0 and stats["excluded"] == 0
    filtered = admin.ok("GET", "/admin/stats", params={"tag": "team:search"})
    assert filtered["captures"] == 2 and filtered["by_tag"]["team"] == {"search": 2}


# -- bad input -----------------------------------------------------------------------------------

BAD_QUERIES = [
    ({"nope": "1"}, "nope"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "abc"}, "limit"),
    ({"limit": "²"}, "limit"),
    ({"status": "²"}, "status"),
    ({"status": "99"}, "status"),
    ({"order": "up"}, "order"),
    ({"after": "zzz"}, "after"),
    ({"after": UNKNOWN_ID.upper()}, "after"),
    ({"tag": "novalue"}, "tag"),
    ({"tag": "bad key:v"}, "tag"),
    ({"endpoint": "files"}, "endpoint"),
    ({"outcome": "fine"}, "outcome"),
    ({"has_tool_calls": "maybe"}, "has_tool_calls"),
    ({"excluded": "yes"}, "excluded"),
    ({"feedback": "great"}, "feedback"),
    ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-45"}, "until"),
    ({"model": ""}, "model"),
    ({"model": "m" * 257}, "model"),
    ({"search": ""}, "search"),
    ({"search": "   "}, "search"),
    ({"search": "x" * 513}, "search"),
    ({"model": "' OR 1=1; DROP TABLE captures; --"}, None),  # SQL metacharacters: 200, no rows
]


@pytest.mark.parametrize(("params", "param"), BAD_QUERIES)
def test_bad_query_parameters_are_400(admin, params, param):
    response = admin.http.get("/admin/captures", params=params)
    if param is None:
        assert response.status_code == 200 and response.json()["data"] == []
        return
    error = assert_error(response, 400, param)
    assert error["type"] == "invalid_request_error"
    # the same filter language for stats (where page parameters are unknown: 400 as well)
    assert_error(admin.http.get("/admin/stats", params=params), 400, param)


@pytest.mark.parametrize("search", ['"unbalanced', "AND OR", "title:x"])
def test_invalid_full_text_queries_are_400(admin, seeded, search):
    assert_error(admin.http.get("/admin/captures", params={"search": search}), 400, "search")


def test_an_unknown_cursor_is_400(admin, seeded):
    assert_error(admin.http.get("/admin/captures", params={"after": UNKNOWN_ID}), 400, "after")


def test_repeated_single_parameters_are_400(admin):
    response = admin.http.get("/admin/captures", params=[("model", "a"), ("model", "b")])
    assert_error(response, 400, "model")
    many = [("tag", f"k{i}:v") for i in range(21)]
    assert_error(admin.http.get("/admin/captures", params=many), 400, "tag")


BAD_BODIES = [
    (b"{not json", None),
    (b"", None),
    (b"[]", None),
    (b"{}", None),
    (b'{"unknown": 1}', "unknown"),
    (b'{"add_tags": []}', "add_tags"),
    (b'{"add_tags": {"a\\n": "v"}}', "add_tags"),
    (b'{"add_tags": {"k": "v\\u0000"}}', "add_tags"),
    (b'{"remove_tags": ["a\\n"]}', "remove_tags"),
    (b'{"feedback": {"score": 2}}', "feedback.score"),
    (b'{"feedback": {"score": true}}', "feedback.score"),
    (b'{"feedback": {"note": "no score"}}', "feedback.score"),
    (b'{"feedback": "good"}', "feedback"),
    (b'{"excluded": "yes"}', "excluded"),
    (b'{"corrected_response": "text"}', "corrected_response"),
    (b'{"excluded": NaN}', None),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_bad_patch_bodies_are_400(admin, seeded, body, param):
    path = f"/admin/captures/{seeded.summarize_news}"
    headers = {"content-type": "application/json"}
    assert_error(admin.http.patch(path, content=body, headers=headers), 400, param)
    bulk = b'{"all": true, "patch": ' + body + b"}"
    if body.startswith((b"{", b"[")) and body not in (b"{not json", b'{"excluded": NaN}'):
        expected = f"patch.{param}" if param else "patch"
        assert_error(admin.http.post("/admin/captures/update", content=bulk), 400, expected)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"filter": {"status": "200"}, "all": True}, "filter.status"),
        ({"filter": {"status": True}}, "filter.status"),
        ({"filter": {"has_tool_calls": "true"}}, "filter.has_tool_calls"),
        ({"filter": {"tag": 3}}, "filter.tag"),
        ({"filter": {"tag": ["a:b", "nope"]}}, "filter.tag"),
        ({"filter": {"since": "yesterday"}}, "filter.since"),
        ({"filter": {"colour": "red"}}, "filter.colour"),
        ({"filter": []}, "filter"),
        ({"all": "yes"}, "all"),
        ({"all": True, "extra": 1}, "extra"),
    ],
)
def test_bad_bulk_bodies_are_400(admin, body, param):
    assert_error(admin.http.post("/admin/captures/delete", json=body), 400, param)
    with_patch = {**body, "patch": {"excluded": True}}
    assert_error(admin.http.post("/admin/captures/update", json=with_patch), 400, param)


def test_bulk_update_without_a_patch_is_400(admin):
    assert_error(admin.http.post("/admin/captures/update", json={"all": True}), 400, "patch")


def test_malformed_and_unknown_ids_are_404(admin):
    for ref in ("not-an-id", UNKNOWN_ID.upper(), UNKNOWN_ID[:-1], "chatcmpl-abc123", "update"):
        for method in ("GET", "DELETE"):
            assert_error(admin.http.request(method, f"/admin/captures/{ref}"), 404, "id")
        assert_error(admin.http.patch(f"/admin/captures/{ref}", json={"excluded": True}), 404)
    assert_error(admin.http.get(f"/admin/captures/{UNKNOWN_ID}"), 404, "id")
    assert_error(admin.http.get(f"/admin/captures/{UNKNOWN_ID}%0A"), 404, "id")


def test_bodies_over_the_cap_are_413(admin, seeded):
    big = {"corrected_response": {"text": "x" * (1024 * 1024)}}
    path = f"/admin/captures/{seeded.summarize_news}"
    assert_error(admin.http.patch(path, json=big), 413)

    def chunks():
        for _ in range(20):
            yield b" " * 65536  # no content-length: cut while reading
        yield b"{}"

    assert_error(admin.http.patch(path, content=chunks()), 413)
    assert_error(admin.http.post("/admin/captures/update", json={"all": True, "patch": big}), 413)


# -- secrets -------------------------------------------------------------------------------------


def test_the_admin_token_is_never_logged_or_stored(start_proxy, mock_url, tmp_path, caplog, capfd):
    caplog.set_level("DEBUG")
    db = tmp_path / "secrets.db"
    with (
        start_proxy(
            upstream=mock_url,
            database=str(db),
            admin_token=TOKEN,
            flush_interval=0.02,
            log_level="debug",
        ) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        admin = Admin(base, http, db)
        ids = make_captures(base)
        wait_for_captures(admin, 8)
        admin.ok("PATCH", f"/admin/captures/{ids.summarize_news}", json={"excluded": True})
        admin.ok("GET", "/admin/stats")
        admin.ok("GET", "/admin/openapi.json")
        admin.ok("DELETE", f"/admin/captures/{ids.translate}")
        for headers in ({"Authorization": f"Bearer {WRONG}"}, {}):
            http.get("/admin/captures", headers=headers)
        # the admin token used as an API key by mistake still never lands anywhere
        with openai.OpenAI(base_url=base + "/v1", api_key=TOKEN, max_retries=0) as client:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        wait_for_captures(admin, 8)
    out, err = capfd.readouterr()
    for secret in (TOKEN, WRONG, TOKEN[8:28]):
        assert secret not in caplog.text and secret not in out and secret not in err
        for path in tmp_path.glob("secrets.db*"):
            assert secret.encode() not in path.read_bytes(), path.name


# -- store failures (the admin app alone, over ASGI) -------------------------------------------


class BrokenStore:
    """Every call fails the way the store reports trouble (or, with ``bug``, a plain bug)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise self.exc

        return fail


ROUTES_WITH_BODIES = [
    ("GET", "/admin/captures", None),
    ("GET", f"/admin/captures/{UNKNOWN_ID}", None),
    ("PATCH", f"/admin/captures/{UNKNOWN_ID}", {"excluded": True}),
    ("DELETE", f"/admin/captures/{UNKNOWN_ID}", None),
    ("POST", "/admin/captures/update", {"all": True, "patch": {"excluded": True}}),
    ("POST", "/admin/captures/delete", {"all": True}),
    ("GET", "/admin/stats", None),
]


@pytest.mark.anyio
@pytest.mark.parametrize("store", ["unavailable", "closed"])
async def test_store_trouble_is_an_openai_shaped_503(store, caplog):
    from proxy.admin.api import create_admin_app
    from proxy.settings import Secret
    from storage.errors import StoreUnavailable

    broken = BrokenStore(StoreUnavailable("database disk image is malformed"))
    app = create_admin_app(Secret(TOKEN), lambda: broken if store == "unavailable" else None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin", headers=AUTH) as c:
        for method, path, body in ROUTES_WITH_BODIES:
            response = await c.request(method, path, json=body)
            error = assert_error(response, 503)
            assert (error["type"], error["code"]) == ("server_error", "store_unavailable")
            assert "malformed" not in error["message"]  # details go to the log only
        assert (await c.get("/admin/openapi.json")).status_code == 200  # needs no store
    if store == "unavailable":
        assert "malformed" in caplog.text


@pytest.mark.anyio
async def test_a_bug_is_an_openai_shaped_500_without_a_traceback():
    from proxy.admin.api import create_admin_app
    from proxy.settings import Secret

    broken = BrokenStore(RuntimeError("internal detail"))
    app = create_admin_app(Secret(TOKEN), lambda: broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin", headers=AUTH) as c:
        response = await c.get("/admin/captures")
    error = assert_error(response, 500)
    assert "internal detail" not in response.text and "Traceback" not in response.text
    assert error["type"] == "proxy_error"
