"""Shared fixtures: a clean environment, a real mock upstream, and real proxies in front of it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from storage.ids import new_capture_id
from storage.models import CaptureRecord, Usage
from tests._server import serve_in_thread


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
