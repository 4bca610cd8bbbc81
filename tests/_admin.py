"""Shared by the admin API tests: the canary admin token, a client, and real captures made
through the proxy with the official SDK."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

TOKEN = "admin-canary-9c41f07e2b5d4a86b3e1c0d9f2a7e6b5"  # >= 32 characters
WRONG = TOKEN[:-1] + "0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNKNOWN_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
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


@dataclass
class Admin:
    base: str
    http: httpx.Client
    db: Path

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def captures(self, **params: Any) -> list[dict[str, Any]]:
        return self.ok("GET", "/admin/captures", params={"limit": 1000, **params})["data"]


@dataclass
class Seeded:
    summarize_news: str  # capture ids
    translate: str
    tool_call: str
    other_model: str
    failed: str
    first_response: str
    follow_up: str
    embedding: str


def make_captures(base: str) -> Seeded:
    def tags(value: str) -> dict[str, str]:
        return {"X-Stillroom-Tags": value}

    def chat(client: openai.OpenAI, text: str, **kwargs: Any) -> str:
        messages = [{"role": "user", "content": text}]
        model = kwargs.pop("model", "gpt-4o-mini")
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, **kwargs
        )
        return raw.headers["x-stillroom-capture-id"]

    with openai.OpenAI(base_url=base + "/v1", api_key="sk-admin-test", max_retries=0) as client:
        news = chat(
            client,
            "Summarise the news about otters",
            extra_headers=tags("task=summarize, team=search"),
        )
        translate = chat(
            client, "Translate penguins to French", extra_headers=tags("task=translate,team=search")
        )
        tool = chat(client, "Weather in Oslo?", tools=TOOLS, extra_headers=tags("task=summarize"))
        other = chat(client, "Say hi", model="gpt-4.1-nano")
        try:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "This one fails"}],
                extra_headers={"x-mock-status": "500", **tags("task=summarize")},
            )
        except openai.InternalServerError as exc:
            failed = exc.response.headers["x-stillroom-capture-id"]
        first = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Hello")
        follow = client.responses.with_raw_response.create(
            model="gpt-4o-mini", input="And then?", previous_response_id=first.parse().id
        )
        embedding = client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input="x"
        )
    return Seeded(
        news,
        translate,
        tool,
        other,
        failed,
        first.headers["x-stillroom-capture-id"],
        follow.headers["x-stillroom-capture-id"],
        embedding.headers["x-stillroom-capture-id"],
    )


def wait_for_captures(admin: Admin, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(admin.captures()) < count:
        assert time.monotonic() < deadline, f"captures never reached {count}"
        time.sleep(0.02)
