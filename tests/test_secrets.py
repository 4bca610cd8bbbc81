"""T20: planted canary keys never persist — not in the database, WAL, logs, metrics or errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.test_cli import free_port, wait_http

CLIENT_KEY = "sk-canary-CLIENT-0123456789-abcdefXYZ"  # fake; hyphens keep it unlike a real key
UPSTREAM_KEY = "sk-canary-UPSTREAM-0123456789-abcdefXYZ"
ADMIN_TOKEN = "canary-admin-token-0123456789abcdef0123456789"
COOKIE = "session=canaryCOOKIE0123456789abcdef"
CANARIES = (CLIENT_KEY, UPSTREAM_KEY, ADMIN_TOKEN, COOKIE.split("=", 1)[1])


def substrings(secret: str, size: int = 12) -> set[bytes]:
    return {secret[i : i + size].encode() for i in range(len(secret) - size + 1)}


def leaks(data: bytes) -> list[str]:
    return [s for s in CANARIES if any(piece in data for piece in substrings(s))]


@pytest.mark.timeout(90)
def test_t20_canary_keys_appear_nowhere(mock_url, tmp_path):
    db = tmp_path / "canary.db"
    port = free_port()
    env = {
        **os.environ,
        "STILLROOM_UPSTREAM": mock_url,
        "STILLROOM_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "STILLROOM_ADMIN_TOKEN": ADMIN_TOKEN,
        "STILLROOM_DATABASE": str(db),
        "STILLROOM_LOG_LEVEL": "debug",
        "STILLROOM_ACCESS_LOG": "on",
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    bodies = b""
    try:
        wait_http(base + "/healthz")
        with openai.OpenAI(
            base_url=base + "/v1",
            api_key=CLIENT_KEY,
            max_retries=0,
            default_headers={"cookie": COOKIE, "api-key": CLIENT_KEY},
        ) as client:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            list(
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=True
                )
            )
            client.responses.create(model="m", input="hi")
            with pytest.raises(openai.APIStatusError):
                client.with_options(
                    default_headers={"x-mock-status": "401"}
                ).chat.completions.create(model="m", messages=[])
        # No client key: the proxy adds the operator's upstream key.
        r = httpx.post(
            base + "/v1/chat/completions?key=" + CLIENT_KEY,
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        bodies += r.content
        bad = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "m", "messages": []},
            headers={"authorization": f"Bearer {CLIENT_KEY}", "x-stillroom-tags": "broken"},
        )
        assert bad.status_code == 400
        bodies += bad.content
        bodies += httpx.get(base + "/metrics").content
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if b"stillroom_captures_written_total 5.0" in httpx.get(base + "/metrics").content:
                break
            time.sleep(0.05)
        # The spool holds each exchange whole until a graceful stop erases it: look now.
        spooled = list((tmp_path / "canary.db.spool").glob("*.seg"))
        assert spooled, "captures were spooled"
        for path in spooled:
            assert leaks(path.read_bytes()) == [], path.name
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    files = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and p.parts[len(tmp_path.parts)].startswith("canary.db")
    ]
    assert files, "the database was written"
    for path in [*files, log]:
        assert leaks(path.read_bytes()) == [], path.name
    assert leaks(bodies) == []
