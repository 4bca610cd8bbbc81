"""Shared fixtures: a clean environment, a real mock upstream, and real proxies in front of it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from storage.ids import new_capture_id
from storage.models import CaptureRecord, Usage
from tests._server import serve_in_thread

if TYPE_CHECKING:
    from proxy.records import ExchangeCopy


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STILLROOM_*/OPENAI_* or proxy variables leak into a test from the machine."""
    for name in list(os.environ):
        if name.startswith(("STILLROOM_", "OPENAI_")) or name.lower() in (
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        ):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def mock_url() -> Iterator[str]:
    """A real `stillroom mock` server (default options) shared by the session."""
    from proxy.mock import MockOptions, create_mock_app

    with serve_in_thread(create_mock_app(MockOptions())) as url:
        yield url


ProxyFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def start_proxy(tmp_path) -> ProxyFactory:
    """``with start_proxy(upstream=url, **settings) as base:`` runs `stillroom serve`'s app
    (its database in the test's tmp_path unless given)."""

    @contextmanager
    def start(**overrides: Any) -> Iterator[str]:
        from proxy.app import create_app
        from proxy.settings import load_settings

        overrides.setdefault("database", str(tmp_path / "proxy.db"))
        settings = load_settings({}, **{k: str(v) for k, v in overrides.items()})
        options = {"server_header": False, "date_header": False, "proxy_headers": False}
        with serve_in_thread(create_app(settings), http="httptools", **options) as url:
            yield url

    return start


@pytest.fixture
def proxy_url(start_proxy: ProxyFactory, mock_url: str) -> Iterator[str]:
    with start_proxy(upstream=mock_url) as url:
        yield url


def make_copy(**overrides: Any) -> ExchangeCopy:
    """A complete ``ExchangeCopy`` (a non-streamed chat completion the tee saw); override any
    field."""
    from proxy.records import ExchangeCopy

    fields: dict[str, Any] = {
        "capture_id": "c1",
        "created_at": 1.0,
        "endpoint": "chat/completions",
        "method": "POST",
        "path": "/v1/chat/completions",
        "request_body": b'{"model":"m"}',
        "response_body": b"{}",
        "response_truncated": False,
        "status": 200,
        "content_type": "application/json",
        "content_encoding": None,
        "outcome": "completed",
        "error": None,
        "latency_ms": 1.0,
        "ttft_ms": None,
        "tags": {},
        "upstream_request_id": None,
        "retry_count": None,
        "key_fingerprint": None,
    }
    return ExchangeCopy(**(fields | overrides))


def make_capture(**overrides: Any) -> CaptureRecord:
    """A complete, valid ``CaptureRecord`` (a non-streamed chat completion); override any field."""
    response = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
    fields: dict[str, Any] = {
        "id": new_capture_id(),
        "created_at": 1_700_000_000.25,
        "endpoint": "chat/completions",
        "method": "POST",
        "path": "/v1/chat/completions",
        "requested_model": "gpt-4o-mini",
        "returned_model": "gpt-4o-mini-2024-07-18",
        "stream": False,
        "request_body": (
            b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"Be brief."},'
            b'{"role":"user","content":"Say hello."}]}'
        ),
        "response_body": json.dumps(response).encode(),
        "response_truncated": False,
        "response_content_type": "application/json",
        "response": response,
        "status": 200,
        "outcome": "completed",
        "error": None,
        "latency_ms": 123.5,
        "ttft_ms": 120.25,
        "usage": Usage(input_tokens=12, output_tokens=3, total_tokens=15),
        "tags": {"team": "search"},
        "upstream_request_id": "req_123",
        "retry_count": 0,
        "key_fingerprint": "fp_0a1b2c3d",
        "response_id": "chatcmpl-abc123",
        "previous_response_id": None,
        "has_tool_calls": False,
    }
    fields.update(overrides)
    return CaptureRecord(**fields)


# -- the Postgres backend ------------------------------------------------------------------------

PG_HOST = "127.0.0.1:5432"
PG_DATABASE = "test"


def _pg_try(url: str) -> str | None:
    """None when ``url`` answers a query, else why not."""
    import asyncio

    async def probe() -> None:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=3)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _pg_admin(url: str, *statements: str) -> None:
    import asyncio

    async def run() -> None:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=5)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The base URL of the test Postgres (trust auth, database ``test``).

    Unreachable: the test is skipped, unless ``STILLROOM_TEST_REQUIRE_POSTGRES=1`` (CI), where
    it fails.
    """
    import getpass
    import importlib.util

    required = os.environ.get("STILLROOM_TEST_REQUIRE_POSTGRES") == "1"
    if importlib.util.find_spec("asyncpg") is None:
        reason = "asyncpg is not installed"
    else:
        reasons = []
        for user in dict.fromkeys(("postgres", getpass.getuser())):
            url = f"postgresql://{user}@{PG_HOST}/{PG_DATABASE}"
            why = _pg_try(url)
            if why is None:
                return url
            reasons.append(f"{user}: {why}")
        reason = "; ".join(reasons)
    message = f"Postgres at {PG_HOST}/{PG_DATABASE} is not usable ({reason})"
    if required:
        pytest.fail(message + " and STILLROOM_TEST_REQUIRE_POSTGRES=1")
    pytest.skip(message)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A ``postgresql://`` URL whose ``search_path`` is a fresh schema, dropped afterwards."""
    import uuid

    schema = f"stillroom_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    _pg_admin(pg_server, f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{pg_server}?search_path={schema}"
    finally:
        _pg_admin(pg_server, f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A ``--database`` value for each backend: a SQLite file, or a fresh Postgres schema."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(store_url: str) -> Any:
    """A migrated, empty store on each backend."""
    from storage.connect import open_store

    s: Any = open_store(store_url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def count_rows(store: Any, table: str) -> int:
    """Rows in one of the store's tables, on either backend (tests only)."""
    from storage.postgres import PostgresStore

    if isinstance(store, PostgresStore):

        async def fetch(conn: Any) -> int:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))

        return await store._read(fetch)
    import sqlite3

    db = sqlite3.connect(store.path)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def is_postgres(store: Any) -> bool:
    return type(store).__name__ == "PostgresStore"
