"""OpenAI's Stored Completions API served from the local store: the real proxy in front of
`stillroom mock`, driven by the official SDK (list, retrieve, update, delete, messages)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import openai
import pytest

from proxy.admin._completion_shapes import (
    completion_id,
    completion_object,
    input_messages,
    is_stored_completion,
)
from proxy.admin.stored_completions import StoredCompletions, match_route
from storage.base import NullStore
from storage.errors import StoreUnavailable
from storage.query import Curation, StoredCapture
from storage.sqlite import SQLiteStore
from tests.conftest import make_capture

ADMIN = "admin-token-" + "x" * 32
KEY_A = "sk-team-a-stored-completions"
KEY_B = "sk-team-b-stored-completions"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Look up the weather",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def served(start_proxy, mock_url, tmp_path):
    """A proxy serving stored completions locally, with an admin token; yields (base, db)."""
    db = tmp_path / "stored.db"
    with start_proxy(
        upstream=mock_url, database=str(db), flush_interval=0.02, admin_token=ADMIN
    ) as base:
        yield base, db


def sdk(base: str, key: str = KEY_A, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, **kwargs)


def wait_for(db, capture_ids: list[str], timeout: float = 5.0) -> None:
    """Block until every capture id is in the store (the writer batches asynchronously)."""

    async def poll() -> None:
        async with SQLiteStore(str(db)) as store:
            deadline = time.monotonic() + timeout
            pending = set(capture_ids)
            while pending and time.monotonic() < deadline:
                for capture_id in list(pending):
                    if await store.get(capture_id) is not None:
                        pending.discard(capture_id)
                if pending:
                    await asyncio.sleep(0.02)
            assert not pending, f"captures never landed: {pending}"

    asyncio.run(poll())


def create(client: openai.OpenAI, text: str, *, stream: bool = False, **extra):
    """One chat completion through the proxy; returns (completion id, capture id, request id)."""
    messages = extra.pop("messages", [{"role": "user", "content": text}])
    model = extra.pop("model", "gpt-4o-mini")
    if stream:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
        chunks = list(raw.parse())
        completion_id = chunks[0].id
    else:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, **extra
        )
        completion_id = raw.parse().id
    return completion_id, raw.headers["x-stillroom-capture-id"], raw.headers["x-request-id"]


def make_many(db, client, texts, **extra) -> list[str]:
    made = [create(client, t, **extra) for t in texts]
    wait_for(db, [m[1] for m in made])
    return [m[0] for m in made]


def unique(word: str) -> str:
    return f"{word} {uuid.uuid4().hex}"  # the mock's ids derive from the body: keep them apart


def test_list_and_retrieve_return_what_was_captured(served):
    base, db = served
    with sdk(base) as client:
        plain = create(client, unique("plain"), metadata={"team": "search"})
        streamed = create(client, unique("streamed"), stream=True)
        tooled = create(client, unique("tools"), tools=TOOLS, temperature=0.3, user="u-1")
        wait_for(db, [plain[1], streamed[1], tooled[1]])
        page = client.chat.completions.list()
        assert [c.id for c in page.data] == [plain[0], streamed[0], tooled[0]]  # asc default
        assert page.has_more is False

        one = client.chat.completions.retrieve(plain[0])
        assert one.object == "chat.completion" and one.id == plain[0]
        assert one.metadata == {"team": "search"}
        assert one.model_extra["request_id"] == plain[2]
        assert one.choices[0].message.content
        assert one.usage and one.usage.total_tokens

        s = client.chat.completions.retrieve(streamed[0])
        assert s.object == "chat.completion" and s.choices[0].message.content
        assert s.usage and s.usage.completion_tokens
        assert set(s.model_dump()) == set(one.model_dump())  # streamed reassembles to one shape

        t = client.chat.completions.retrieve(tooled[0]).model_dump()
        assert t["tools"] == TOOLS and t["temperature"] == 0.3 and t["input_user"] == "u-1"
        assert t["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert t["seed"] is None and one.model_dump()["tools"] is None
        assert page.data[2].model_dump() == t  # the list returns the same objects

        desc = client.chat.completions.list(order="desc")
        assert [c.id for c in desc.data] == [tooled[0], streamed[0], plain[0]]


def test_metadata_model_filters_and_pagination(served):
    base, db = served
    with sdk(base) as client:
        b1 = make_many(db, client, [unique(f"b1 {i}") for i in range(5)], metadata={"batch": "b1"})
        b2 = make_many(db, client, [unique("b2")], metadata={"batch": "b2", "lang": "en"})
        other = make_many(db, client, [unique("other")], model="gpt-4.1-nano")

        pages = client.chat.completions.list(metadata={"batch": "b1"}, limit=2)
        assert len(pages.data) == 2 and pages.has_more
        assert [c.id for c in pages] == b1  # auto-pagination across three pages, oldest first
        newest = client.chat.completions.list(metadata={"batch": "b1"}, limit=2, order="desc")
        assert [c.id for c in newest] == b1[::-1]

        both = client.chat.completions.list(metadata={"batch": "b2", "lang": "en"})
        assert [c.id for c in both.data] == b2
        none = client.chat.completions.list(metadata={"batch": "b1", "lang": "en"})
        assert none.data == [] and none.has_more is False
        assert [c.id for c in client.chat.completions.list(model="gpt-4.1-nano")] == other
        assert len(list(client.chat.completions.list(limit=3))) == 7


def test_update_replaces_metadata_and_delete_removes(served):
    base, db = served
    with sdk(base) as client:
        (cid,) = make_many(db, client, [unique("edit")], metadata={"a": "1", "b": "2"})
        updated = client.chat.completions.update(cid, metadata={"b": "3", "c": "4"})
        assert updated.id == cid and updated.metadata == {"b": "3", "c": "4"}
        assert client.chat.completions.retrieve(cid).metadata == {"b": "3", "c": "4"}
        assert [c.id for c in client.chat.completions.list(metadata={"c": "4"})] == [cid]
        assert client.chat.completions.list(metadata={"a": "1"}).data == []
        odd = {"with space": "v" * 512}  # OpenAI's limits, not the header tag syntax
        assert client.chat.completions.update(cid, metadata=odd).metadata == odd
        assert [c.id for c in client.chat.completions.list(metadata=odd)] == [cid]
        assert client.chat.completions.update(cid, metadata=None).metadata == {}

        deleted = client.chat.completions.delete(cid)
        assert (deleted.object, deleted.id, deleted.deleted) == (
            "chat.completion.deleted",
            cid,
            True,
        )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(cid)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.delete(cid)
        assert client.chat.completions.list().data == []


def test_messages_list_with_parts_and_pagination(served):
    base, db = served
    messages = [
        {"role": "system", "content": "Be terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": unique("Describe")},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        },
        {"role": "assistant", "content": "A cat.", "name": "bot"},
        {"role": "user", "content": "Shorter."},
    ]
    with sdk(base) as client:
        (cid,) = make_many(db, client, ["unused"], messages=messages)
        page = client.chat.completions.messages.list(cid)
        assert [m.id for m in page.data] == [f"{cid}-{i}" for i in range(4)]
        assert page.has_more is False
        first, second = page.data[0], page.data[1]
        assert (first.role, first.content, first.content_parts) == ("system", "Be terse.", None)
        parts = [p.model_dump(exclude_none=True) for p in second.content_parts]
        assert parts == messages[1]["content"]
        assert second.content == messages[1]["content"][0]["text"]
        assert page.data[2].model_dump()["name"] == "bot"

        paged = client.chat.completions.messages.list(cid, limit=1)
        assert len(paged.data) == 1 and paged.has_more
        assert [m.id for m in paged] == [f"{cid}-{i}" for i in range(4)]
        backwards = client.chat.completions.messages.list(cid, limit=3, order="desc")
        assert [m.id for m in backwards] == [f"{cid}-{i}" for i in (3, 2, 1, 0)]
        after = client.chat.completions.messages.list(cid, after=f"{cid}-1", order="desc")
        assert [m.id for m in after.data] == [f"{cid}-0"]


def test_one_key_never_sees_another_keys_captures(served):
    base, db = served
    with sdk(base, KEY_A) as a, sdk(base, KEY_B) as b, sdk(base, ADMIN) as admin:
        a_made = create(a, unique("team a"), metadata={"team": "a"})
        b_made = create(b, unique("team b"), metadata={"team": "b"})
        wait_for(db, [a_made[1], b_made[1]])
        assert [c.id for c in a.chat.completions.list()] == [a_made[0]]
        assert [c.id for c in b.chat.completions.list()] == [b_made[0]]
        assert a.chat.completions.list(metadata={"team": "b"}).data == []
        assert [c.id for c in admin.chat.completions.list()] == [a_made[0], b_made[0]]

        for ref in (a_made[0], a_made[1]):  # by completion id and by capture id
            with pytest.raises(openai.NotFoundError):
                b.chat.completions.retrieve(ref)
            with pytest.raises(openai.NotFoundError):
                b.chat.completions.update(ref, metadata={"stolen": "yes"})
            with pytest.raises(openai.NotFoundError):
                b.chat.completions.messages.list(ref)
            with pytest.raises(openai.NotFoundError):
                b.chat.completions.delete(ref)
        with pytest.raises(openai.BadRequestError):  # another key's id is no cursor either
            b.chat.completions.list(after=a_made[0])
        assert a.chat.completions.retrieve(a_made[0]).metadata == {"team": "a"}

        assert admin.chat.completions.retrieve(b_made[0]).metadata == {"team": "b"}
        assert admin.chat.completions.update(b_made[0], metadata={"ok": "1"}).metadata == {
            "ok": "1"
        }
        assert admin.chat.completions.delete(b_made[0]).deleted
        assert b.chat.completions.list().data == []

    with httpx.Client(base_url=base) as raw:
        for headers in ({}, {"authorization": "Bearer"}, {"api-key": ""}):
            r = raw.get("/v1/chat/completions", headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "invalid_request_error"
        by_api_key = raw.get("/v1/chat/completions", headers={"api-key": KEY_A})
        assert [c["id"] for c in by_api_key.json()["data"]] == [a_made[0]]


def test_capture_id_is_accepted_wherever_an_id_is(served):
    base, db = served
    with sdk(base) as client:
        first = create(client, unique("first"))
        second = create(client, unique("second"))
        wait_for(db, [first[1], second[1]])
        assert client.chat.completions.retrieve(first[1]).id == first[0]
        assert [c.id for c in client.chat.completions.list(after=first[1])] == [second[0]]
        assert [c.id for c in client.chat.completions.list(after=first[0])] == [second[0]]
        messages = client.chat.completions.messages.list(first[1])
        assert [m.id for m in messages.data] == [f"{first[0]}-0"]
        assert client.chat.completions.update(first[1], metadata={"k": "v"}).id == first[0]
        assert client.chat.completions.delete(first[1]).id == first[0]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(first[0])


def test_only_completed_chat_completions_are_listed(served):
    base, db = served
    with sdk(base) as client:
        ok = create(client, unique("ok"))
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": unique("fails")}],
                extra_headers={"x-mock-status": "400"},
            )
        failed_id = err.value.response.headers["x-stillroom-capture-id"]
        resp = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Hi")
        wait_for(db, [ok[1], failed_id, resp.headers["x-stillroom-capture-id"]])
        assert [c.id for c in client.chat.completions.list()] == [ok[0]]
        for ref in (failed_id, resp.headers["x-stillroom-capture-id"]):
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.retrieve(ref)


def test_bad_input_gets_openai_shaped_errors(served):
    base, db = served
    with sdk(base) as client:
        (cid,) = make_many(db, client, [unique("x")])
    auth = {"authorization": f"Bearer {KEY_A}"}
    bad_lists = [
        "limit=0",
        "limit=101",
        "limit=ten",
        "order=sideways",
        "after=chatcmpl-unknown",
        "after=",
        "colour=blue",
        "model=a&model=b",
        "metadata=x",
        "metadata[" + "k" * 65 + "]=v",
        "metadata[k]=" + "v" * 513,
        "&".join(f"metadata[k{i}]=v" for i in range(17)),
    ]
    bad_updates = [
        b"{}",
        b"not json",
        b"[]",
        b'{"metadata": {"k": 1}}',
        b'{"metadata": "k"}',
        b'{"metadata": {}, "model": "x"}',
        b'{"metadata": {' + b",".join(b'"k%d": "v"' % i for i in range(17)) + b"}}",
    ]
    with httpx.Client(base_url=base, headers=auth) as raw:
        for query in bad_lists:
            r = raw.get("/v1/chat/completions?" + query)
            assert r.status_code == 400, query
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        for body in bad_updates:
            r = raw.post(f"/v1/chat/completions/{cid}", content=body)
            assert r.status_code == 400, body
            assert r.json()["error"]["type"] == "invalid_request_error"
        assert raw.post(f"/v1/chat/completions/{cid}", content=b" " * 70_000).status_code == 413
        for path in ("chatcmpl-nope", "0193aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee", "x" * 300):
            r = raw.get(f"/v1/chat/completions/{path}")
            assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"
        bad_messages = ["after=nope", f"after={cid}-9", "after=other-0", "limit=0", "x=1"]
        for query in bad_messages:
            r = raw.get(f"/v1/chat/completions/{cid}/messages?{query}")
            assert r.status_code == 400, query
        assert raw.get(f"/v1/chat/completions/{cid}?x=1").status_code == 400
        assert raw.get("/v1/chat/completions?metadata[k]=v&after=" + cid).status_code == 200


def test_upstream_mode_forwards_everything(start_proxy, mock_url, tmp_path):
    marker = uuid.uuid4().hex
    db = tmp_path / "up.db"
    with start_proxy(
        upstream=mock_url, database=str(db), flush_interval=0.02, stored_completions="upstream"
    ) as base:
        with sdk(base) as client:
            made = create(client, unique("up"))  # create is forwarded and captured either way
            wait_for(db, [made[1]])
            with pytest.raises(openai.NotFoundError):  # the mock has no stored completions
                client.chat.completions.list(extra_query={"marker": marker})
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.retrieve(made[0], extra_query={"marker": marker})
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.delete(made[0], extra_query={"marker": marker})
    seen = httpx.get(mock_url + "/_mock/requests").json()
    forwarded = [(r["method"], r["path"]) for r in seen if marker in r["query"]]
    assert forwarded == [
        ("GET", "/v1/chat/completions"),
        ("GET", f"/v1/chat/completions/{made[0]}"),
        ("DELETE", f"/v1/chat/completions/{made[0]}"),
    ]


def test_local_mode_forwards_what_it_does_not_serve(served, mock_url):
    base, db = served
    marker = uuid.uuid4().hex
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {KEY_A}"}) as raw:
        assert raw.put(f"/v1/chat/completions/x?marker={marker}").status_code == 404
        assert raw.get(f"/v1/chat/completions/x/other?marker={marker}").status_code == 404
        assert raw.get(f"/v1/models?marker={marker}").status_code == 200
        create_ = raw.post(
            f"/v1/chat/completions?marker={marker}",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert create_.status_code == 200 and create_.headers["x-stillroom-capture-id"]
        wait_for(db, [create_.headers["x-stillroom-capture-id"]])
        # served locally behind a /t/ prefix too
        listed = raw.get("/t/task=x/v1/chat/completions")
        assert [c["id"] for c in listed.json()["data"]] == [create_.json()["id"]]
    seen = httpx.get(mock_url + "/_mock/requests").json()
    forwarded = [(r["method"], r["path"]) for r in seen if marker in r["query"]]
    assert forwarded == [
        ("PUT", "/v1/chat/completions/x"),
        ("GET", "/v1/chat/completions/x/other"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ]


class _BrokenStore(NullStore):
    async def list_captures(self, where, *, after=None, limit=50, order="desc"):
        raise StoreUnavailable("database is locked")

    async def get_capture(self, ref, *, key_fingerprint=None):
        raise StoreUnavailable("database is locked")


@pytest.mark.anyio
async def test_store_failure_is_a_503_without_a_traceback():
    app = StoredCompletions(_BrokenStore(), fingerprint_secret=b"s" * 32, admin_token=None)
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        for method, path in (
            ("GET", "/v1/chat/completions"),
            ("GET", "/v1/chat/completions/chatcmpl-x"),
            ("DELETE", "/v1/chat/completions/chatcmpl-x"),
            ("GET", "/v1/chat/completions/chatcmpl-x/messages"),
        ):
            r = await c.request(method, path)
            assert r.status_code == 503, path
            assert r.json()["error"]["code"] == "store_unavailable"
            assert "locked" not in r.text and "Traceback" not in r.text
        r = await c.post("/v1/chat/completions/chatcmpl-x", json={"metadata": {}})
        assert r.status_code == 503


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v1/chat/completions", ("list", "")),
        ("POST", "/v1/chat/completions", None),  # create: the hot path, forwarded
        ("GET", "/v1/chat/completions/", None),
        ("GET", "/v1/chat/completionsX", None),
        ("GET", "/v1/chat/completions/c1", ("retrieve", "c1")),
        ("POST", "/v1/chat/completions/c1", ("update", "c1")),
        ("DELETE", "/v1/chat/completions/c1", ("delete", "c1")),
        ("PUT", "/v1/chat/completions/c1", None),
        ("GET", "/v1/chat/completions/c1/messages", ("messages", "c1")),
        ("POST", "/v1/chat/completions/c1/messages", None),
        ("GET", "/v1/chat/completions/c1/other", None),
    ],
)
def test_match_route(method, path, expected):
    call = match_route(method, path)
    assert (call and (call.action, call.ref)) == expected


def test_shapes_of_odd_records():
    record = make_capture(
        request_body=b"not json",
        response={"id": "chatcmpl-1"},
        response_id="chatcmpl-1",
        tags={},
    )
    obj = completion_object(StoredCapture(record, Curation()))
    assert obj["created"] == int(record.created_at) and obj["model"] == record.returned_model
    assert obj["choices"] == [] and obj["tools"] is None and obj["metadata"] == {}
    assert input_messages(record, "chatcmpl-1") == []
    assert input_messages(make_capture(request_body=b" []"), "c") == []
    assert input_messages(make_capture(request_body=b'{"messages": {}}'), "c") == []
    odd = make_capture(
        request_body=b'{"messages": [7, {"role": "user", "content": 5}, '
        b'{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}, '
        b'{"role": "tool", "content": "r", "tool_call_id": "call_1"}]}'
    )
    items = input_messages(odd, "c")
    assert [m["id"] for m in items] == ["c-0", "c-1", "c-2", "c-3"]
    assert items[0]["role"] is None and items[1]["content"] is None
    assert items[2]["content"] is None and items[2]["content_parts"][0]["type"] == "image_url"
    assert items[3]["tool_call_id"] == "call_1"
    assert not is_stored_completion(make_capture(outcome="upstream_error"))
    assert not is_stored_completion(make_capture(response_id=None))
    assert completion_id(make_capture(response_id=None)) != "chatcmpl-abc123"


class _RacyStore(NullStore):
    """Finds the capture, then loses it before the edit (deleted in between)."""

    async def get_capture(self, ref, *, key_fingerprint=None):
        return StoredCapture(make_capture(key_fingerprint=None), Curation())


@pytest.mark.anyio
async def test_capture_deleted_between_lookup_and_edit_is_a_404():
    app = StoredCompletions(_RacyStore(), fingerprint_secret=b"s" * 32, admin_token=ADMIN)
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        assert (await c.delete("/v1/chat/completions/chatcmpl-abc123")).status_code == 404
        r = await c.post("/v1/chat/completions/chatcmpl-abc123", json={"metadata": {"k": "v"}})
        assert r.status_code == 404
        assert (await c.get("/v1/chat/completions/chatcmpl-abc123")).status_code == 200
        assert (await c.put("/v1/chat/completions/chatcmpl-abc123")).status_code == 404
