"""Finding, curating and hard-deleting captures in the SQLite store (storage.query contract)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from storage import migrations
from storage.ids import new_capture_id
from storage.query import (
    CaptureFilter,
    CapturePatch,
    QueryError,
    parse_filter,
    parse_patch,
)
from storage.sqlite import SQLiteStore
from tests.conftest import count_rows, is_postgres, make_capture

pytestmark = pytest.mark.anyio


def chat(text: str, answer: str, **overrides: Any) -> Any:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are the shared system prompt."},
                {"role": "user", "content": text},
            ],
        }
    ).encode()
    response = {
        "id": "chatcmpl-" + new_capture_id()[-12:],
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
    }
    fields: dict[str, Any] = {
        "request_body": body,
        "response": response,
        "response_body": json.dumps(response).encode(),
        "response_id": response["id"],
    }
    fields.update(overrides)
    return make_capture(**fields)


async def test_list_newest_first_with_cursor_pages(store: SQLiteStore) -> None:
    records = [chat(f"question {i}", f"answer {i}") for i in range(7)]
    await store.write_batch(records)
    ids = [r.id for r in records]
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_captures(CaptureFilter(), after=after, limit=3)
        seen += [item.record.id for item in page.items]
        if not page.has_more:
            break
        after = page.last_id
    assert seen == sorted(ids, reverse=True)
    page = await store.list_captures(CaptureFilter(), limit=10, order="asc")
    assert [item.record.id for item in page.items] == sorted(ids)
    assert page.has_more is False
    assert page.items[0].record == records[0]


async def test_filters_combine(store: SQLiteStore) -> None:
    a = chat("alpha", "one", tags={"task": "summarize", "team": "a"}, has_tool_calls=True)
    b = chat("beta", "two", tags={"task": "summarize", "team": "b"}, outcome="upstream_error")
    c = chat("gamma", "three", tags={"task": "classify"}, returned_model="other-model", status=429)
    await store.write_batch([a, b, c])

    async def ids(**params: list[str]) -> set[str]:
        page = await store.list_captures(parse_filter(params), limit=100)
        return {item.record.id for item in page.items}

    assert await ids(tag=["task:summarize"]) == {a.id, b.id}
    assert await ids(tag=["task:summarize", "team:b"]) == {b.id}
    assert await ids(tag=["team:b", "task:summarize"]) == {b.id}
    assert await ids(tag=["task:nope"]) == set()
    assert await ids(model=["other-model"]) == {c.id}
    assert await ids(outcome=["upstream_error"]) == {b.id}
    assert await ids(status=["429"]) == {c.id}
    assert await ids(has_tool_calls=["true"]) == {a.id}
    assert await ids(endpoint=["responses"]) == set()
    assert await ids(search=["gamma"]) == {c.id}
    assert await ids(search=["two"]) == {b.id}
    assert await ids(search=["beta two"], tag=["team:b"]) == {b.id}
    assert await ids(search=["beta three"]) == set()
    # the system prompt is not indexed: it repeats in every capture
    assert await ids(search=["shared"]) == set()
    assert await ids(since=["1600000000"], until=["1800000000"]) == {a.id, b.id, c.id}
    assert await ids(until=["2000-01-01T00:00:00Z"]) == set()


async def test_search_syntax_errors_are_query_errors(store: SQLiteStore) -> None:
    await store.write_batch([chat("gpt-4o is here", "yes")])
    page = await store.list_captures(parse_filter({"search": ["gpt-4o"]}))
    assert len(page.items) == 1
    for bad in ('"unterminated', "*7", "*"):  # a leading * asks FTS5 for a "special query"
        with pytest.raises(QueryError) as caught:
            await store.list_captures(CaptureFilter(search=bad))
        assert caught.value.param == "search"
        with pytest.raises(QueryError):
            await store.stats(CaptureFilter(search=bad))


async def test_get_by_capture_id_or_response_id_and_scoping(store: SQLiteStore) -> None:
    record = chat("hi", "there", key_fingerprint="kf_aaaa")
    await store.write_batch([record])
    by_id = await store.get_capture(record.id)
    by_response = await store.get_capture(record.response_id)
    assert by_id is not None and by_response is not None
    assert by_id.record == record == by_response.record
    assert await store.get_capture(record.id, key_fingerprint="kf_bbbb") is None
    assert await store.get_capture(record.id, key_fingerprint="kf_aaaa") is not None
    assert await store.get_capture("chatcmpl-unknown") is None
    page = await store.list_captures(CaptureFilter(key_fingerprint="kf_bbbb"))
    assert page.items == []


async def test_curation_edits(store: SQLiteStore) -> None:
    a, b = chat("one", "1", tags={"k": "v", "drop": "me"}), chat("two", "2", tags={"k": "w"})
    await store.write_batch([a, b])
    patch = parse_patch(
        {
            "add_tags": {"reviewed": "yes", "k": "v2"},
            "remove_tags": ["drop"],
            "feedback": {"score": -0.5, "note": "too long"},
            "excluded": True,
            "corrected_response": {"choices": [{"message": {"content": "fixed"}}]},
        }
    )
    updated = await store.update_capture(a.id, patch)
    assert updated is not None
    assert dict(updated.record.tags) == {"k": "v2", "reviewed": "yes"}
    assert updated.curation.feedback_score == -0.5
    assert updated.curation.feedback_note == "too long"
    assert updated.curation.excluded is True
    assert updated.curation.corrected_response == {"choices": [{"message": {"content": "fixed"}}]}
    assert updated.curation.updated_at is not None
    # the teacher's answer is untouched
    assert updated.record.response == a.response
    assert await store.update_capture(new_capture_id(), patch) is None

    negative = await store.list_captures(parse_filter({"feedback": ["negative"]}))
    assert [item.record.id for item in negative.items] == [a.id]
    none = await store.list_captures(parse_filter({"feedback": ["none"]}))
    assert [item.record.id for item in none.items] == [b.id]
    excluded = await store.list_captures(parse_filter({"excluded": ["false"]}))
    assert [item.record.id for item in excluded.items] == [b.id]

    cleared = await store.update_capture(a.id, parse_patch({"feedback": None, "excluded": False}))
    assert cleared is not None and cleared.curation.feedback_score is None
    assert cleared.curation.excluded is False
    assert cleared.curation.corrected_response is not None  # not mentioned: kept

    n = await store.update_where(
        parse_filter({"tag": ["reviewed:yes"]}), CapturePatch(add_tags={"batch": "1"})
    )
    assert n == 1
    n = await store.update_where(CaptureFilter(), CapturePatch(excluded=True))
    assert n == 2


async def test_hard_delete_leaves_no_text_in_files(tmp_path: Path, store: SQLiteStore) -> None:
    canary = "zebracanary7f3e secret plans"
    shared_prefix = "A long shared conversation prefix. " * 30
    victim = chat(shared_prefix + canary, "answer about zebracanary7f3e")
    keeper = chat(shared_prefix + "keep me", "kept")
    await store.write_batch([victim, keeper])
    assert len((await store.list_captures(parse_filter({"search": ["zebracanary7f3e"]}))).items)
    assert await store.delete_capture(victim.id) is True
    assert await store.delete_capture(victim.id) is False
    assert await store.get_capture(victim.id) is None
    assert (await store.list_captures(parse_filter({"search": ["zebracanary7f3e"]}))).items == []
    kept = await store.get_capture(keeper.id)
    assert kept is not None and kept.record == keeper  # its shared blobs survived
    if is_postgres(store):  # rows gone; the bytes leave the files with VACUUM (storage._pg_edit)
        assert await count_rows(store, "captures") == 1
        return
    await store.close()
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert b"zebracanary7f3e" not in data, path.name
        assert b"secret plans" not in data, path.name


async def test_delete_where_and_purge(store: SQLiteStore) -> None:
    old = [chat(f"old {i}", "x", created_at=1_000_000.0 + i) for i in range(3)]
    new = [chat(f"new {i}", "y", created_at=2_000_000_000.0 + i, tags={"t": "1"}) for i in range(3)]
    await store.write_batch(old + new)
    assert await store.purge_before(1_500_000_000.0) == 3
    assert await store.count() == 3
    assert await store.delete_where(parse_filter({"tag": ["t:1"], "search": ["new"]})) == 3
    assert await store.count() == 0
    assert await count_rows(store, "blobs") == 0
    assert await count_rows(store, "capture_tags") == 0


async def test_conversation_chain(store: SQLiteStore) -> None:
    def resp(response_id: str, previous: str | None) -> Any:
        body: dict[str, Any] = {"model": "gpt-4o", "input": "hi " + response_id}
        if previous:
            body["previous_response_id"] = previous
        response = {"id": response_id, "object": "response", "output": []}
        return make_capture(
            endpoint="responses",
            path="/v1/responses",
            request_body=json.dumps(body).encode(),
            response=response,
            response_body=json.dumps(response).encode(),
            response_id=response_id,
            previous_response_id=previous,
        )

    first, second, third = resp("resp_1", None), resp("resp_2", "resp_1"), resp("resp_3", "resp_2")
    orphan = resp("resp_9", "resp_never_captured")
    await store.write_batch([first, second, third, orphan])
    chain = await store.conversation(third.id)
    assert chain is not None and chain.complete
    assert [c.record.id for c in chain.captures] == [first.id, second.id, third.id]
    broken = await store.conversation(orphan.id)
    assert broken is not None and not broken.complete
    assert broken.missing_response_id == "resp_never_captured"
    assert await store.conversation(new_capture_id()) is None


async def test_stats(store: SQLiteStore) -> None:
    await store.write_batch(
        [
            chat("a", "1", tags={"task": "x"}),
            chat("b", "2", tags={"task": "x"}, returned_model="m2"),
            chat("c", "3", tags={"task": "y"}, outcome="upstream_error"),
        ]
    )
    stats = await store.stats()
    assert stats.captures == 3
    assert stats.by_model == {"gpt-4o-mini-2024-07-18": 2, "m2": 1}
    assert stats.by_outcome == {"completed": 2, "upstream_error": 1}
    assert stats.by_tag == {"task": {"x": 2, "y": 1}}
    assert stats.input_tokens == 36 and stats.total_tokens == 45
    assert list(stats.by_day) == ["2023-11-14"]
    assert stats.store_bytes > 0
    only_x = await store.stats(parse_filter({"tag": ["task:x"]}))
    assert only_x.captures == 2 and only_x.by_tag == {"task": {"x": 2}}


def test_migration_from_m002_keeps_captures_and_indexes_them(tmp_path: Path) -> None:
    """A database written before m003 is rebuilt with a stable seq and searchable text."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    saved = list(migrations.MIGRATIONS)
    try:
        migrations.MIGRATIONS[:] = saved[:2]
        migrations.migrate(conn)
    finally:
        migrations.MIGRATIONS[:] = saved
    conn.close()
    import anyio

    record = chat("searchable pelican", "an answer")

    async def write_then_upgrade() -> None:
        store = SQLiteStore(path)
        try:
            # write with the m002 schema: the store's FTS insert needs m003, so insert by hand
            from storage._rows import CAPTURE_COLUMNS, encode_batch

            batch = encode_batch([record])
            raw = sqlite3.connect(path)
            with raw:
                for digest, (codec, size, data) in batch.blobs.items():
                    raw.execute(
                        "INSERT INTO blobs (hash, refs, codec, size, data) VALUES (?, 1, ?, ?, ?)",
                        (digest, codec, size, data),
                    )
                marks = ", ".join("?" for _ in CAPTURE_COLUMNS)
                raw.execute(
                    f"INSERT INTO captures ({', '.join(CAPTURE_COLUMNS)}) VALUES ({marks})",
                    batch.captures[0].row,
                )
                raw.executemany(
                    "INSERT INTO capture_tags (capture_id, key, value) VALUES (?, ?, ?)",
                    batch.captures[0].tags,
                )
            raw.close()
            assert await store.migrate() == [
                "m003_curation_search",
                "m004_datasets",
                "m005_training_jobs",
                "m006_documents",
                "m007_capture_spool",
            ]
            got = await store.get_capture(record.id)
            assert got is not None and got.record == record
            page = await store.list_captures(CaptureFilter(search="pelican"))
            assert [item.record.id for item in page.items] == [record.id]
        finally:
            await store.close()

    anyio.run(write_then_upgrade)


async def test_unknown_cursor_is_a_query_error(store: SQLiteStore) -> None:
    await store.write_batch([chat("a", "b")])
    with pytest.raises(QueryError) as caught:
        await store.list_captures(CaptureFilter(), after=new_capture_id())
    assert caught.value.param == "after"


def test_parse_filter_refuses_bad_input() -> None:
    for params in (
        {"nope": ["1"]},
        {"tag": ["no-colon"]},
        {"tag": [":v"]},
        {"status": ["99"]},
        {"status": ["abc"]},
        {"since": ["yesterday"]},
        {"feedback": ["great"]},
        {"outcome": ["done"]},
        {"endpoint": ["models"]},
        {"has_tool_calls": ["maybe"]},
        {"model": ["a", "b"]},
        {"search": ["   "]},
    ):
        with pytest.raises(QueryError) as caught:
            parse_filter(params)
        assert caught.value.param == next(iter(params))
    assert parse_filter({"since": ["2026-11-28"]}).since == 1795824000.0


def test_parse_patch_refuses_bad_input() -> None:
    for body in (
        [],
        {},
        {"feedback": {"score": 2}},
        {"feedback": {"score": True}},
        {"feedback": {"note": "no score"}},
        {"feedback": {"score": 0, "extra": 1}},
        {"excluded": "yes"},
        {"add_tags": {"bad key!": "v"}},
        {"add_tags": {"k": 1}},
        {"remove_tags": "k"},
        {"corrected_response": "text"},
        {"unknown": 1},
    ):
        with pytest.raises(QueryError):
            parse_patch(body)


def test_search_text_indexes_the_new_turn_and_the_answer() -> None:
    from storage.text import search_text

    body = json.dumps(
        {
            "messages": [
                {"role": "system", "content": "system words"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": [{"type": "text", "text": "second question"}]},
                {"role": "tool", "tool_call_id": "c1", "content": "tool result"},
            ]
        }
    ).encode()
    response = {
        "choices": [
            {
                "message": {
                    "content": "final",
                    "tool_calls": [{"function": {"name": "lookup", "arguments": '{"q": "x"}'}}],
                }
            }
        ]
    }
    prompt, answer = search_text("chat/completions", body, response)
    assert prompt == "second question\ntool result"
    assert answer == 'final\nlookup\n{"q": "x"}'
    prompt, answer = search_text(
        "responses",
        json.dumps({"instructions": "skip", "input": "hello there"}).encode(),
        {"output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]},
    )
    assert (prompt, answer) == ("hello there", "hi")
    assert search_text("completions", b'{"prompt": ["a", "b"]}', {"choices": [{"text": "c"}]}) == (
        "a\nb",
        "c",
    )
    assert search_text("chat/completions", b"not json", None) == ("", "")


async def test_search_across_index_partitions(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage import _sqlite_search

    # Postgres has one index, no partitions: the same paging is checked there too.

    monkeypatch.setattr(_sqlite_search, "PARTITION_BITS", 2)  # 4 captures per partition
    records = [chat(f"q{i} needle" if i % 3 else f"q{i}", f"a{i}") for i in range(14)]
    for record in records:  # one batch each: seq follows the list
        await store.write_batch([record])
    with_needle = [r.id for i, r in enumerate(records) if i % 3]
    for order in ("desc", "asc"):
        seen: list[str] = []
        after = None
        while True:
            page = await store.list_captures(
                CaptureFilter(search="needle"), after=after, limit=3, order=order
            )
            seen += [item.record.id for item in page.items]
            if not page.has_more:
                break
            after = page.last_id
        assert seen == (with_needle[::-1] if order == "desc" else with_needle)
    stats = await store.stats(CaptureFilter(search="needle"))
    assert stats.captures == len(with_needle)
    victim = records[5]
    assert await store.delete_capture(victim.id)
    page = await store.list_captures(CaptureFilter(search="needle"), limit=100)
    assert victim.id not in {item.record.id for item in page.items}
    assert len(page.items) == len(with_needle) - 1
    assert await store.delete_where(CaptureFilter(search="needle")) == len(with_needle) - 1
    assert await store.count() == 14 - len(with_needle)


async def test_search_syntax_error_on_an_empty_store(store: SQLiteStore) -> None:
    with pytest.raises(QueryError):
        await store.list_captures(CaptureFilter(search='"unbalanced'))
    with pytest.raises(QueryError):
        await store.delete_where(CaptureFilter(search='"unbalanced'))


def test_ids_tags_and_numbers_must_match_whole_values() -> None:
    from storage.query import is_capture_id, parse_limit

    assert not is_capture_id("01a2212e-b077-71cb-8513-2341d4547c53\n")
    with pytest.raises(QueryError):
        parse_patch({"add_tags": {"k\n": "v"}})
    with pytest.raises(QueryError):
        parse_limit("²")
    with pytest.raises(QueryError):
        parse_filter({"status": ["²⁰⁰"]})
