"""Datasets end to end: real captures through the proxy, quality gates, splits, exports.

Traffic is made with the official SDK against `stillroom mock` through `stillroom serve`:
plain and streamed chat, tool calls with their results, a Responses API chain, upstream errors,
answers cut by max_tokens, refusals (the mock refuses a message containing "[refuse]") and
exact duplicates (the mock answers the same request the same way). The dataset is built from
the proxy's own SQLite file, exported in every format and checked.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest

from storage.connect import open_store
from storage.datasets import DatasetExists, DatasetSpec, create_dataset, parse_spec
from storage.export import export_dataset
from storage.query import CaptureFilter, CapturePatch, QueryError, parse_filter
from storage.validate import validate_jsonl
from tests.conftest import _pg_admin, make_capture

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Look up the weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def make_traffic(base: str) -> dict[str, Any]:
    """Real captures of every kind; returns what a test needs to know about them."""
    made: dict[str, Any] = {}
    tags = {"X-Stillroom-Tags": "task=support"}
    with openai.OpenAI(base_url=base + "/v1", api_key="sk-dataset-test", max_retries=0) as client:
        for i in range(12):
            reply = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[
                    {"role": "system", "content": "You are the support bot."},
                    {"role": "user", "content": f"Question number {i} about invoices"},
                ],
                stream=i % 2 == 1,
                extra_headers=tags,
            )
            if i % 2 == 1:
                for _chunk in reply:  # read to the end: no socket left for the GC
                    pass
        # the same request twice: the mock answers it the same way, an exact duplicate
        for _ in range(2):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Question number 0 about invoices, again"}],
                extra_headers=tags,
            )
        # a tool call, then the conversation with its result
        first = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=TOOLS,
            extra_headers=tags,
        )
        call = first.choices[0].message.tool_calls[0]
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "user", "content": "Weather in Oslo?"},
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'},
            ],
            tools=TOOLS,
            extra_headers=tags,
        )
        # a Responses API conversation of two turns
        r1 = client.responses.create(
            model="gpt-4o-mini", input="Plan a trip to Bergen", extra_headers=tags
        )
        client.responses.create(
            model="gpt-4o-mini",
            input="Make it three days",
            previous_response_id=r1.id,
            extra_headers=tags,
        )
        # left out by the gates
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "This one fails upstream"}],
                extra_headers={**tags, "x-mock-status": "500"},
            )
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Write a long essay about lighthouses"}],
            max_tokens=2,
            extra_headers=tags,
        )
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Tell me something forbidden [refuse]"}],
            extra_headers=tags,
        )
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "A question someone disliked the answer to"}],
            extra_headers=tags,
        )
        made["disliked"] = raw.headers["x-stillroom-capture-id"]
    return made


def wait_for(db: str, n: int) -> None:
    async def count() -> int:
        async with open_store(str(db)) as store:
            return await store.count()

    deadline = time.monotonic() + 10
    while (have := anyio.run(count)) < n:
        assert time.monotonic() < deadline, f"{have} of {n} captures landed"
        time.sleep(0.05)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def traffic_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mock_url: str
) -> Iterator[tuple[str, dict]]:
    """The proxy's captures of ``make_traffic`` on each backend (a file, or a Postgres schema)."""
    from proxy.app import create_app
    from proxy.settings import load_settings
    from tests._server import serve_in_thread

    schema = None
    if request.param == "sqlite":
        db = str(tmp_path_factory.mktemp("datasets") / "proxy.db")
    else:
        server = request.getfixturevalue("pg_server")
        schema = f"stillroom_datasets_{uuid.uuid4().hex[:12]}"
        _pg_admin(server, f'CREATE SCHEMA "{schema}"')
        db = f"{server}?search_path={schema}"
    try:
        settings = load_settings({}, upstream=mock_url, database=db, flush_interval="0.01")
        with serve_in_thread(create_app(settings), http="httptools") as base:
            made = make_traffic(base)
            wait_for(db, 22)
        yield db, made
    finally:
        if schema is not None:
            _pg_admin(server, f'DROP SCHEMA "{schema}" CASCADE')


def build(db: str, spec: DatasetSpec, patch: tuple[str, CapturePatch] | None = None) -> Any:
    async def run() -> Any:
        async with open_store(str(db)) as store:
            if patch is not None:
                await store.update_capture(*patch)
            return await create_dataset(store, spec)

    return anyio.run(run)


def export(db: str, name: str, fmt: str, split: str | None, out: Path) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with open_store(str(db)) as store:
            return await export_dataset(store, name, fmt, split, out)

    return anyio.run(run)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gates_splits_and_exports_of_real_traffic(traffic_db, tmp_path: Path) -> None:
    db, made = traffic_db
    where = parse_filter({"tag": ["task:support"]})
    dataset = build(db, DatasetSpec(name="support-v1", where=where, validation=0.2))
    assert dataset.considered == 22
    assert dataset.rejected == {
        "duplicate": 1,
        "finish_length": 1,
        "not_completed": 1,
        "refusal": 1,
    }
    kept = sum(dataset.counts.values())
    assert kept == 22 - 4
    assert dataset.counts["holdout"] == 0
    assert dataset.counts["validation"] > 0 and dataset.counts["train"] > 0
    for split, stats in dataset.tokens.items():
        assert stats.examples == dataset.counts[split]
        if stats.examples:
            assert 0 < stats.min <= stats.mean <= stats.max and stats.p95 <= stats.max
            assert stats.cost_per_epoch == round(stats.total / 1e6 * 3.0, 4)

    out = tmp_path / "train.jsonl"
    manifest = export(db, "support-v1", "openai-chat", "train", out)
    rows = lines(out)
    assert len(rows) == dataset.counts["train"] == manifest["lines"]
    assert manifest["content_hash"] == dataset.content_hash
    assert json.loads((tmp_path / "train.jsonl.manifest.json").read_text()) == manifest
    report = validate_jsonl(out)
    assert report.ok, report.to_json()
    for row in rows:
        assert row["messages"][-1]["role"] == "assistant"
        assert row["messages"][-1]["weight"] == 1
        for message in row["messages"][:-1]:
            assert message["role"] in ("system", "user", "assistant", "tool")
            if message["role"] == "assistant":
                assert message["weight"] == 0
    with_tools = [row for row in rows + lines_of(db, "support-v1", tmp_path) if "tools" in row]
    assert with_tools, "the tool-call conversation is in some split"
    for row in with_tools:
        for message in row["messages"]:
            for call in message.get("tool_calls", []):
                assert isinstance(call["function"]["arguments"], str)
                json.loads(call["function"]["arguments"])

    for fmt, name in (("hf", "train.hf.jsonl"), ("hf-prompt-completion", "train.pc.jsonl")):
        export(db, "support-v1", fmt, "train", tmp_path / name)
        assert len(lines(tmp_path / name)) == dataset.counts["train"]


def lines_of(db: str, name: str, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "validation.jsonl"
    export(db, name, "openai-chat", "validation", out)
    return lines(out)


def test_responses_chain_becomes_one_conversation(traffic_db, tmp_path: Path) -> None:
    db, _ = traffic_db
    where = parse_filter({"endpoint": ["responses"]})
    dataset = build(db, DatasetSpec(name="responses-v1", where=where, validation=0.0))
    assert dataset.counts["train"] == 2
    out = tmp_path / "responses.jsonl"
    export(db, "responses-v1", "openai-chat", "train", out)
    second = lines(out)[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user", "assistant"]
    assert second[0]["content"] == "Plan a trip to Bergen"
    assert second[2]["content"] == "Make it three days"
    assert [m.get("weight") for m in second if m["role"] == "assistant"] == [0, 1]


def test_same_inputs_give_byte_identical_exports(traffic_db, tmp_path: Path) -> None:
    db, _ = traffic_db
    where = parse_filter({"tag": ["task:support"]})
    outputs = []
    for name in ("same-a", "same-b"):
        dataset = build(db, DatasetSpec(name=name, where=where, validation=0.25, holdout=0.25))
        out = tmp_path / f"{name}.jsonl"
        export(db, name, "openai-chat", None, out)
        outputs.append((dataset.content_hash, dataset.counts, out.read_bytes()))
    assert outputs[0] == outputs[1]


def test_corrections_and_feedback_make_preference_pairs(traffic_db, tmp_path: Path) -> None:
    db, made = traffic_db
    where = parse_filter({"tag": ["task:support"]})
    corrected = {"role": "assistant", "content": "A better answer, written by a person."}

    async def curate() -> str:
        async with open_store(str(db)) as store:
            page = await store.list_captures(parse_filter({"search": ["invoices"]}), limit=1)
            target = page.items[0].record.id
            await store.update_capture(target, CapturePatch(corrected_response=corrected))
            await store.update_capture(made["disliked"], CapturePatch(feedback_score=-1.0))
            return target

    target = anyio.run(curate)
    dataset = build(db, DatasetSpec(name="prefs-v1", where=where, validation=0.0))
    assert dataset.rejected.get("negative_feedback") == 1
    out = tmp_path / "dpo.jsonl"
    export(db, "prefs-v1", "openai-dpo", "train", out)
    pairs = lines(out)
    assert len(pairs) == 1
    assert pairs[0]["preferred_output"] == [corrected]
    assert pairs[0]["non_preferred_output"][0]["role"] == "assistant"
    assert pairs[0]["non_preferred_output"][0]["content"] != corrected["content"]
    chat = tmp_path / "chat.jsonl"
    export(db, "prefs-v1", "openai-chat", "train", chat)
    assert any(row["messages"][-1]["content"] == corrected["content"] for row in lines(chat))
    assert target


def test_names_are_unique_and_specs_are_checked(traffic_db) -> None:
    db, _ = traffic_db
    build(db, DatasetSpec(name="unique-v1", where=parse_filter({"model": ["nope"]})))
    with pytest.raises(DatasetExists):
        build(db, DatasetSpec(name="unique-v1"))
    for body, param in (
        ({}, "name"),
        ({"name": "Bad Name"}, "name"),
        ({"name": "x", "validation": 1.5}, "validation"),
        ({"name": "x", "validation": 0.6, "holdout": 0.5}, "holdout"),
        ({"name": "x", "holdout_by": "random"}, "holdout_by"),
        ({"name": "x", "dedupe": "fuzzy"}, "dedupe"),
        ({"name": "x", "max_tokens": 0}, "max_tokens"),
        ({"name": "x", "filter": {"colour": "red"}}, "colour"),
        ({"name": "x", "surprise": 1}, "surprise"),
    ):
        with pytest.raises(QueryError) as caught:
            parse_spec(body)
        assert caught.value.param == param, body
    spec = parse_spec({"name": "ok-1", "filter": {"tag": "task:support"}})
    assert spec.where == CaptureFilter(tags=(("task", "support"),))


def chat_record(text: str, answer: str, created_at: float) -> Any:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    response = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
    }
    return make_capture(
        request_body=body,
        response=response,
        response_body=json.dumps(response).encode(),
        created_at=created_at,
    )


def test_holdout_by_time_never_shares_a_prompt(store_url: str) -> None:
    records = [chat_record(f"prompt {i % 6}", f"answer {i}", 1000.0 + i) for i in range(30)]

    async def run() -> Any:
        async with open_store(store_url) as store:
            await store.migrate()
            await store.write_batch(records)
            return await create_dataset(
                store,
                DatasetSpec(name="by-time", validation=0.2, holdout=0.3, holdout_by="time"),
            )

    dataset = anyio.run(run)
    # every prompt repeats across the time line: the newest copies are dropped as leakage
    assert dataset.leakage["removed"] == dataset.rejected["leakage"] > 0
    assert dataset.counts["holdout"] == 0 or dataset.leakage["shared_prompts"] == 0

    async def splits() -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        async with open_store(store_url) as store:
            async for batch in store.dataset_items("by-time"):
                for item, stored in batch:
                    assert stored is not None
                    prompt = json.loads(stored.record.request_body)["messages"][0]["content"]
                    seen.setdefault(prompt, set()).add(item.split)
        return seen

    by_prompt = anyio.run(splits)
    for prompt, used in by_prompt.items():
        assert not ("holdout" in used and len(used) > 1), prompt


def test_near_duplicates_and_the_token_limit(store_url: str) -> None:
    records = [
        chat_record("Where is order 1234?", "It shipped.", 1000.0),
        chat_record("  where IS order 98765? ", "It shipped.", 1001.0),
        chat_record("Something else entirely", "Yes.", 1002.0),
        chat_record("word " * 400, "long", 1003.0),
    ]

    async def run() -> Any:
        async with open_store(store_url) as store:
            await store.migrate()
            await store.write_batch(records)
            exact = await create_dataset(store, DatasetSpec(name="exact", max_tokens=200))
            near = await create_dataset(
                store, DatasetSpec(name="near", dedupe="near", max_tokens=200)
            )
            return exact, near

    exact, near = anyio.run(run)
    assert exact.rejected == {"too_long": 1}
    assert near.rejected == {"near_duplicate": 1, "too_long": 1}
    assert sum(near.counts.values()) == 2


# -- exports rendered by worker processes (storage._dataset_workers) ---------------------------


def export_with(db: str, name: str, fmt: str, split: str | None, out: Path, workers: int) -> Any:
    async def run() -> Any:
        async with open_store(str(db)) as store:
            return await export_dataset(store, name, fmt, split, out, workers=workers)

    return anyio.run(run)


def test_worker_processes_export_the_same_bytes(
    traffic_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage import _dataset_workers

    db, _ = traffic_db
    monkeypatch.setattr(_dataset_workers, "CHUNK", 3)  # many small ranges, out of step with splits
    # every capture: chat, tool calls, Responses chains (rebuilt by the workers too), rejections
    dataset = build(db, DatasetSpec(name="workers-v1", where=CaptureFilter(), validation=0.3))
    assert dataset.counts["validation"] > 0
    cases = [(fmt, None) for fmt in ("openai-chat", "hf", "hf-prompt-completion")]
    cases += [("openai-chat", "validation")]
    for fmt, split in cases:
        one, many = tmp_path / f"{fmt}-{split}-1.jsonl", tmp_path / f"{fmt}-{split}-2.jsonl"
        first = export_with(db, "workers-v1", fmt, split, one, workers=1)
        second = export_with(db, "workers-v1", fmt, split, many, workers=2)
        assert many.read_bytes() == one.read_bytes(), (fmt, split)
        assert second["lines"] == first["lines"] > 0
        assert second["file"] == {**first["file"], "name": many.name}


def test_worker_processes_refuse_a_changed_dataset(tmp_path: Path) -> None:
    from storage.datasets import DatasetChanged

    db = str(tmp_path / "store.db")
    records = [chat_record(f"question {i}", f"answer {i}", 1000.0 + i) for i in range(40)]
    out = tmp_path / "train.jsonl"

    async def run() -> None:
        async with open_store(db) as store:
            await store.migrate()
            await store.write_batch(records)
            await create_dataset(store, DatasetSpec(name="changing", validation=0.0))
            await store.update_capture(records[7].id, CapturePatch(excluded=True))
            await store.delete_capture(records[31].id)
            with pytest.raises(DatasetChanged, match="2 of 40 examples changed"):
                await export_dataset(store, "changing", "openai-chat", "train", out, workers=2)

    anyio.run(run)
    assert not out.exists()
    assert list(tmp_path.glob("*.jsonl*")) == []


def test_small_jobs_stay_in_process() -> None:
    from storage._dataset_workers import MIN_PARALLEL, worker_count

    assert worker_count(MIN_PARALLEL - 1, None, 4) == 1
    assert 1 <= worker_count(MIN_PARALLEL, None, 2) <= 2
    assert worker_count(MIN_PARALLEL, None, 2) == min(2, os.cpu_count() or 1)
    assert worker_count(10, 3, 2) == 3  # asked for
    assert worker_count(10, 0, 2) == 1


# -- datasets judged by worker processes --------------------------------------------------------


def snapshot_of(db: str, name: str) -> tuple[Any, list[Any], list[Any]]:
    """A dataset as stored, without its name and time: info, items, pairs."""

    async def run() -> tuple[Any, list[Any], list[Any]]:
        async with open_store(str(db)) as store:
            dataset = await store.get_dataset(name)
            assert dataset is not None
            info = {k: v for k, v in dataset.to_json().items() if k not in ("name", "created_at")}
            info["spec"] = {k: v for k, v in info["spec"].items() if k != "name"}
            items = [
                (i.position, i.capture_id, i.split, i.content_hash)
                async for batch in store.dataset_items(name)
                for i, _ in batch
            ]
            pairs = [
                (p.position, p.split, p.kind, p.preferred_id, p.rejected_id)
                async for batch in store.dataset_pairs(name)
                for p, _, _ in batch
            ]
            return info, items, pairs

    return anyio.run(run)


def create_with(db: str, spec: DatasetSpec, workers: int) -> Any:
    async def run() -> Any:
        async with open_store(str(db)) as store:
            return await create_dataset(store, spec, workers=workers)

    return anyio.run(run)


def test_worker_processes_build_the_same_dataset(
    traffic_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage import _dataset_workers

    db, _ = traffic_db
    monkeypatch.setattr(_dataset_workers, "SEQ_CHUNK", 3)  # ranges that split chains and batches
    for holdout_by in ("hash", "time"):
        spec = {"validation": 0.2, "holdout": 0.2, "holdout_by": holdout_by, "dedupe": "near"}
        one = create_with(db, DatasetSpec(name=f"one-{holdout_by}", **spec), workers=1)
        many = create_with(db, DatasetSpec(name=f"many-{holdout_by}", **spec), workers=2)
        assert many.content_hash == one.content_hash
        assert snapshot_of(db, f"many-{holdout_by}") == snapshot_of(db, f"one-{holdout_by}")
        assert one.considered == 22  # every capture, Responses chains included


def test_worker_processes_judge_gates_pairs_and_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage import _dataset_workers

    monkeypatch.setattr(_dataset_workers, "SEQ_CHUNK", 7)
    db = str(tmp_path / "store.db")
    records = [chat_record(f"question {i % 23}", f"answer {i % 31}", 1000.0 + i) for i in range(90)]
    records += [chat_record("Where is order 12?", "Shipped.", 2000.0)]
    records += [chat_record(" where IS order 99? ", "Shipped.", 2001.0)]
    records += [chat_record("word " * 400, "long", 2002.0)]
    records += [chat_record("question 10", "answer 10", 3000.0 + i) for i in range(3)]
    patches = {
        3: CapturePatch(feedback_score=1.0),
        26: CapturePatch(feedback_score=-1.0),  # same prompt as 3: a feedback pair
        5: CapturePatch(corrected_response={"role": "assistant", "content": "Better."}),
        8: CapturePatch(excluded=True),
    }

    async def run() -> None:
        async with open_store(db) as store:
            await store.migrate()
            await store.write_batch(records)
            for index, patch in patches.items():
                await store.update_capture(records[index].id, patch)

    anyio.run(run)
    for dedupe in ("exact", "near"):
        spec = {"validation": 0.3, "holdout": 0.1, "dedupe": dedupe, "max_tokens": 200}
        one = create_with(db, DatasetSpec(name=f"one-{dedupe}", **spec), workers=1)
        many = create_with(db, DatasetSpec(name=f"many-{dedupe}", **spec), workers=3)
        assert one.rejected["too_long"] == 1 and one.rejected["excluded"] == 1
        assert one.rejected["negative_feedback"] == 1
        assert many.content_hash == one.content_hash
        info, items, pairs = snapshot_of(db, f"many-{dedupe}")
        assert (info, items, pairs) == snapshot_of(db, f"one-{dedupe}")
        if dedupe == "exact":
            assert one.rejected["duplicate"] > 0
            assert {kind for _, _, kind, _, _ in pairs} == {"correction", "feedback"}
        else:
            assert one.rejected["near_duplicate"] > 0


def test_a_worker_that_dies_is_a_store_error(tmp_path: Path) -> None:
    import sqlite3

    from storage._dataset_workers import _in_order
    from storage.errors import StoreError

    db = tmp_path / "store.db"
    sqlite3.connect(db).close()

    async def run() -> None:
        async for _ in _in_order(str(db), 1, os._exit, iter([(3,)])):  # the worker exits
            pass

    with pytest.raises(StoreError, match="a dataset worker process stopped"):
        anyio.run(run)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_dataset_deleted_during_an_export_is_not_cut_short_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    from storage.datasets import DatasetChanged

    db = str(tmp_path / "store.db")
    records = [chat_record(f"question {i}", f"answer {i}", 1000.0 + i) for i in range(12)]
    out = tmp_path / "train.jsonl"

    async def run() -> None:
        async with open_store(db) as store:
            await store.migrate()
            await store.write_batch(records)
            dataset = await create_dataset(store, DatasetSpec(name="gone", validation=0.0))
            await store.delete_dataset("gone")

            async def stale(name: str) -> Any:  # the export found it, then it was deleted
                return dataset

            monkeypatch.setattr(store, "get_dataset", stale)
            with pytest.raises(DatasetChanged, match="only 0 of 12 examples were found"):
                await export_dataset(store, "gone", "openai-chat", "train", out, workers=workers)

    anyio.run(run)
    assert not out.exists()
