"""The Postgres backend beyond the shared store tests: driver errors, replicas, the real proxy.

The backend-neutral store tests (tests/test_query.py, tests/test_datasets.py, …) run on both
backends through the ``store`` / ``store_url`` fixtures in tests/conftest.py.
"""

from __future__ import annotations

import importlib.util
import json
import time
from typing import Any

import anyio
import openai
import pytest

from storage import _pg_migrations
from storage.connect import open_store
from storage.errors import StoreBusy, StoreError, StoreFull, StoreUnavailable
from storage.postgres import PostgresStore, _classify
from storage.query import CaptureFilter
from tests.conftest import count_rows, make_capture

pytestmark = pytest.mark.anyio


def test_without_asyncpg_a_postgres_url_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "asyncpg" else real(name, *a)
    )
    with pytest.raises(StoreUnavailable) as caught:
        open_store("postgresql://someone@db.example/stillroom")
    assert "pip install 'stillroom[postgres]'" in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_postgres_urls_open_a_postgres_store() -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        assert isinstance(open_store(url), PostgresStore)


async def test_an_unreachable_server_is_store_unavailable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout_s=2)
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.write_batch([make_capture()])
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StoreUnavailable):
        await store.ping()


def test_driver_errors_map_onto_the_store_tree() -> None:
    import asyncpg

    def pg(cls: type[Exception]) -> Exception:
        return cls("boom")

    assert _classify(pg(asyncpg.exceptions.DiskFullError)) is StoreFull
    assert _classify(pg(asyncpg.exceptions.DeadlockDetectedError)) is StoreBusy
    assert _classify(pg(asyncpg.exceptions.SerializationError)) is StoreBusy
    assert _classify(pg(asyncpg.exceptions.QueryCanceledError)) is StoreBusy
    assert _classify(pg(asyncpg.exceptions.AdminShutdownError)) is StoreUnavailable
    assert _classify(pg(asyncpg.exceptions.CannotConnectNowError)) is StoreUnavailable
    assert _classify(pg(asyncpg.exceptions.TooManyConnectionsError)) is StoreUnavailable
    assert _classify(pg(asyncpg.exceptions.InvalidAuthorizationSpecificationError)) is (
        StoreUnavailable
    )
    assert _classify(pg(asyncpg.exceptions.UniqueViolationError)) is StoreError
    assert _classify(asyncpg.exceptions.ConnectionDoesNotExistError("gone")) is StoreUnavailable
    assert _classify(ConnectionRefusedError(111, "refused")) is StoreUnavailable
    assert _classify(TimeoutError()) is StoreUnavailable
    assert _classify(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate")) is StoreError
    assert _classify(KeyError("not a driver error")) is None


async def test_replicas_migrating_at_once_do_not_collide(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    try:
        results: list[list[str]] = [[] for _ in stores]

        async def migrate(i: int) -> None:
            results[i] = await stores[i].migrate()

        async with anyio.create_task_group() as tg:
            for i in range(len(stores)):
                tg.start_soon(migrate, i)
        applied = [name for names in results for name in names]
        assert sorted(applied) == sorted(set(applied))  # each migration ran exactly once
        assert len(applied) == len(_pg_migrations.MIGRATIONS)
        for store in stores:
            assert await store.pending_migrations() == []
        secrets = {await store.install_secret() for store in stores}
        assert len(secrets) == 1  # one install secret, whichever replica made it
    finally:
        for store in stores:
            await store.close()


async def test_a_retried_batch_is_written_once_with_exact_blob_references(pg_url: str) -> None:
    shared = json.dumps({"role": "system", "content": "shared system prompt " * 60})
    records = [
        make_capture(
            request_body=(
                f'{{"model":"m","messages":[{shared},{{"role":"user","content":"q{i}"}}]}}'
            ).encode(),
            tags={"n": str(i)},
        )
        for i in range(5)
    ]
    async with PostgresStore(pg_url) as store:
        await store.migrate()
        await store.write_batch(records[:3])
        await store.write_batch(records)  # a retry after a lost connection, plus two new
        await store.write_batch(records + records)  # and a batch repeating ids
        assert await store.count() == 5
        assert await count_rows(store, "capture_tags") == 5
        assert await count_rows(store, "blobs") == 1

        async def refs(conn: Any) -> int:
            return int(await conn.fetchval("SELECT refs FROM blobs"))

        assert await store._read(refs) == 5
        for record in records:
            got = await store.get(record.id)
            assert got == record
        assert await store.delete_where(CaptureFilter(tags=(("n", "1"),))) == 1
        assert await store._read(refs) == 4
        assert await store.delete_where(CaptureFilter()) == 4
        assert await count_rows(store, "blobs") == 0


async def test_a_record_postgres_cannot_take_is_a_plain_store_error(pg_url: str) -> None:
    async with PostgresStore(pg_url) as store:
        await store.migrate()
        with pytest.raises(StoreError) as caught:
            await store.write_batch([make_capture(error="nul \x00 byte")])
        assert type(caught.value) is StoreError  # the writer isolates and drops this record
        await store.write_batch([make_capture()])
        assert await store.count() == 1


def test_two_proxies_share_one_postgres(start_proxy: Any, mock_url: str, pg_url: str) -> None:
    """Interleaved SDK load through two `stillroom serve` apps: every request stored once."""
    made: list[str] = []
    with (
        start_proxy(upstream=mock_url, database=pg_url, flush_interval="0.01") as one,
        start_proxy(upstream=mock_url, database=pg_url, flush_interval="0.01") as two,
    ):
        clients = [
            openai.OpenAI(base_url=base + "/v1", api_key="sk-pg-test", max_retries=0)
            for base in (one, two)
        ]
        for i in range(20):
            reply = clients[i % 2].chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"question {i} about pelicans"}],
                stream=i % 4 == 3,
            )
            if i % 4 == 3:
                for _chunk in reply:  # read the stream to its end: the connection goes back
                    pass
            else:
                made.append(reply.id)
        for client in clients:
            client.close()

        async def stored() -> tuple[int, list[str], int]:
            async with PostgresStore(pg_url) as store:
                count = await store.count()
                page = await store.list_captures(CaptureFilter(search="pelicans"), limit=100)
                ids = [s.record.response_id or "" for s in page.items]
                return count, ids, len({s.record.id for s in page.items})

        deadline = time.monotonic() + 10
        while (result := anyio.run(stored))[0] < 20:
            assert time.monotonic() < deadline, f"{result[0]} of 20 captures landed"
            time.sleep(0.05)
    count, response_ids, distinct = result
    assert count == 20 and distinct == 20
    assert set(made) <= set(response_ids)
