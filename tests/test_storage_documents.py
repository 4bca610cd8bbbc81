"""Documents and items (storage.documents), on SQLite and Postgres: versions, conflicts,
paging, deletes, and the change marker replicas watch."""

from __future__ import annotations

import asyncio

import pytest

from storage.documents import VersionConflict

pytestmark = pytest.mark.anyio


async def test_create_replace_and_version_checks(store):
    created = await store.put_document("route", "r1", {"mode": "off"}, if_version=0)
    assert (created.version, created.body) == (1, {"mode": "off"})
    with pytest.raises(VersionConflict) as exists:
        await store.put_document("route", "r1", {"mode": "shadow"}, if_version=0)
    assert (exists.value.expected, exists.value.found) == (0, 1)
    second = await store.put_document("route", "r1", {"mode": "shadow"}, if_version=1)
    assert second.version == 2 and second.created_at == created.created_at
    with pytest.raises(VersionConflict):
        await store.put_document("route", "r1", {"mode": "full"}, if_version=1)
    third = await store.put_document("route", "r1", {"mode": "canary", "percent": 50.0})
    assert third.version == 3
    got = await store.get_document("route", "r1")
    assert got is not None and got.body == {"mode": "canary", "percent": 50.0}
    assert await store.get_document("eval", "r1") is None  # kinds are separate


async def test_list_page_delete_and_the_change_marker(store):
    assert await store.documents_changed("eval") == (0.0, 0)
    for n in range(5):
        await store.put_document("eval", f"eval-{n}", {"n": n, "text": "nul \x00 kept"})
    page, more = await store.list_documents("eval", limit=2)
    assert [d.id for d in page] == ["eval-4", "eval-3"] and more
    rest, more = await store.list_documents("eval", after="eval-3", limit=10)
    assert [d.id for d in rest] == ["eval-2", "eval-1", "eval-0"] and not more
    assert rest[0].body["text"] == "nul \x00 kept"
    stamp, count = await store.documents_changed("eval")
    assert count == 5 and stamp > 0
    await asyncio.sleep(0.01)
    await store.put_document("eval", "eval-0", {"n": 0, "again": True})
    assert (await store.documents_changed("eval"))[0] > stamp

    await store.add_items("eval", "eval-1", [{"i": i} for i in range(7)])
    await store.add_items("eval", "eval-2", [{"i": 99}])
    items, more = await store.list_items("eval", "eval-1", limit=4)
    assert [item.body["i"] for item in items] == [0, 1, 2, 3] and more
    tail, more = await store.list_items("eval", "eval-1", after=items[-1].seq)
    assert [item.body["i"] for item in tail] == [4, 5, 6] and not more
    assert await store.delete_document("eval", "eval-1")
    assert not await store.delete_document("eval", "eval-1")
    assert (await store.list_items("eval", "eval-1"))[0] == []
    assert len((await store.list_items("eval", "eval-2"))[0]) == 1


async def test_concurrent_writers_one_wins_each_version(store):
    await store.put_document("route", "r", {"n": 0}, if_version=0)

    async def bump(expected: int) -> bool:
        try:
            await store.put_document("route", "r", {"n": expected}, if_version=expected)
        except VersionConflict:
            return False
        return True

    results = await asyncio.gather(*(bump(1) for _ in range(4)))
    assert results.count(True) == 1
    assert (await store.get_document("route", "r")).version == 2
