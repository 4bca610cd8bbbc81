"""The proxy's own traffic (evals, the judge, shadow requests) and student answers are marked
on the capture and never become training examples; clients cannot forge the marks."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai

from storage.datasets import DatasetSpec, create_dataset
from storage.query import CaptureFilter
from storage.sqlite import SQLiteStore


def wait_stored(db, n: int) -> None:
    async def count() -> int:
        async with SQLiteStore(db) as store:
            return await store.count()

    deadline = time.monotonic() + 10
    while asyncio.run(count()) < n:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_marked_traffic_is_captured_but_never_trained_on(start_proxy, mock_url, tmp_path):
    db = tmp_path / "c.db"
    with start_proxy(upstream=mock_url, database=str(db), flush_interval=0.02) as base:
        for source in (None, "eval", "judge", "shadow"):
            headers = {"X-Stillroom-Tags": "task=mark"}
            if source:
                headers["X-Stillroom-Source"] = source
            with openai.OpenAI(base_url=base + "/v1", api_key="sk-x", max_retries=0,
                               default_headers=headers) as client:  # fmt: skip
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"hello from {source}"}],
                    metadata={"stillroom.source": "forged", "team": "a"},
                )
        wait_stored(db, 4)

        bad = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": []},
                         headers={"X-Stillroom-Tags": "stillroom.served_by=teacher"})  # fmt: skip
        assert bad.status_code == 400 and "proxy's own" in bad.json()["error"]["message"]
        bad = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": []},
                         headers={"X-Stillroom-Source": "customer"})  # fmt: skip
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "X-Stillroom-Source"

    async def check() -> None:
        async with SQLiteStore(db) as store:
            page = await store.list_captures(CaptureFilter(tags=(("task", "mark"),)), limit=10)
            sources = sorted(item.record.tags.get("stillroom.source", "-") for item in page.items)
            assert sources == ["-", "eval", "judge", "shadow"]
            assert all(item.record.tags["team"] == "a" for item in page.items)
            spec = DatasetSpec("marked", where=CaptureFilter(tags=(("task", "mark"),)))
            dataset = await create_dataset(store, spec)
            assert sum(dataset.counts.values()) == 1
            assert dataset.rejected == {"not_teacher": 3}

    asyncio.run(check())


def test_the_reserved_names_agree():
    from proxy import tags
    from storage import examples

    assert tags.SOURCE_TAG == examples.SOURCE_TAG
    assert tags.SERVED_BY_TAG == examples.SERVED_BY_TAG
