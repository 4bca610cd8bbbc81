"""The transparent proxy, end to end: real uvicorn servers, the official SDK, raw HTTP."""

from __future__ import annotations

import hashlib
import json

import httpx
import openai
import pytest

from tests._server import serve_in_thread

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sdk(base: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-test-forward", max_retries=0, **kwargs)


def test_sdk_chat_create_and_raw_response(proxy_url):
    with sdk(proxy_url) as client:
        completion = client.chat.completions.create(**CHAT)
        assert completion.choices[0].message.content
        raw = client.chat.completions.with_raw_response.create(**CHAT)
        assert raw.status_code == 200
        assert raw.headers["x-request-id"].startswith("req_")
        assert raw.parse().id == completion.id


def test_sdk_streaming_chat_with_usage(proxy_url):
    with sdk(proxy_url) as client:
        stream = client.chat.completions.create(
            **CHAT, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_sdk_responses_embeddings_and_models(proxy_url):
    with sdk(proxy_url) as client:
        response = client.responses.create(model="gpt-4o-mini", input="Say hello")
        assert response.output_text
        with client.responses.stream(model="gpt-4o-mini", input="Say hello") as stream:
            final = stream.get_final_response()
        assert final.output_text == response.output_text
        floats = client.embeddings.create(
            model="text-embedding-3-small", input="hi", encoding_format="float"
        )
        # Without encoding_format the SDK asks for base64 and decodes it itself.
        b64 = client.embeddings.create(model="text-embedding-3-small", input="hi")
        assert len(floats.data[0].embedding) > 0
        assert b64.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
        models = client.models.list()
        assert [m.id for m in models.data]
        assert client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi").choices


@pytest.mark.anyio
async def test_async_sdk_create_and_stream(proxy_url):
    async with openai.AsyncOpenAI(
        base_url=proxy_url + "/v1", api_key="sk-test-async", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(**CHAT)
        assert completion.choices[0].message.content
        stream = await client.chat.completions.create(**CHAT, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
def test_upstream_errors_reach_the_sdk_as_the_right_class(proxy_url, status, exc):
    with sdk(proxy_url, default_headers={"x-mock-status": str(status)}) as client:
        with pytest.raises(exc) as info:
            client.chat.completions.create(**CHAT)
    assert info.value.status_code == status


@pytest.mark.parametrize("stream", [False, True])
def test_bytes_through_the_proxy_equal_bytes_direct(proxy_url, mock_url, stream):
    body = json.dumps({**CHAT, "stream": stream, "z_unknown": 1.10, "a": [3, 2]}).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-test"}
    with httpx.Client() as client:
        direct = client.post(mock_url + "/v1/chat/completions", content=body, headers=headers)
        proxied = client.post(proxy_url + "/v1/chat/completions", content=body, headers=headers)
    assert direct.status_code == proxied.status_code == 200
    assert sha(proxied.content) == sha(direct.content)
    assert proxied.headers["content-type"] == direct.headers["content-type"]
    if stream:
        assert proxied.headers["x-accel-buffering"] == "no"


def test_request_body_reaches_upstream_byte_for_byte(proxy_url, mock_url):
    body = b'{"model":"m","messages":[],"b":1.0000,"a":1e3,  "unknown":{"k":[null]}}'
    with httpx.Client() as client:
        client.delete(mock_url + "/_mock/requests")
        r = client.post(
            proxy_url + "/v1/chat/completions?x=1&y=%2F",
            content=body,
            headers={"x-mock-mode": "echo", "content-type": "application/json"},
        )
    echoed = r.json()
    assert echoed["body_sha256"] == sha(body)
    assert echoed["body_len"] == len(body)
    assert echoed["path"] == "/v1/chat/completions"
    assert echoed["query"] == "x=1&y=%2F"


def test_get_and_delete_pass_through(proxy_url, mock_url):
    with httpx.Client() as client:
        direct = client.get(mock_url + "/v1/models/gpt-4o-mini")
        proxied = client.get(proxy_url + "/v1/models/gpt-4o-mini")
        assert proxied.content == direct.content
        gone = client.delete(proxy_url + "/v1/no/such/thing")
        assert gone.status_code == 404 and gone.json()["error"]["message"]


async def path_echo(scope, receive, send):
    """An upstream that answers with the path and query it was asked for."""
    if scope["type"] != "http":
        return
    body = json.dumps({"path": scope["raw_path"].decode(), "query": scope["query_string"].decode()})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


@pytest.mark.parametrize(
    ("upstream_path", "expected"), [("/openai", "/openai/v1"), ("/openai/v1", "/openai/v1")]
)
def test_upstream_with_path_prefix(start_proxy, upstream_path, expected):
    with serve_in_thread(path_echo) as upstream:
        with start_proxy(upstream=upstream + upstream_path) as base:
            r = httpx.get(base + "/v1/models/a%2Fb?x=%20y")
    assert r.json() == {"path": expected + "/models/a%2Fb", "query": "x=%20y"}


def test_operator_key_is_added_when_client_sends_none(start_proxy, mock_url):
    with (
        start_proxy(upstream=mock_url, upstream_api_key="sk-operator-key") as base,
        httpx.Client() as client,
    ):
        r = client.post(base + "/v1/chat/completions", json=CHAT, headers={"x-mock-mode": "echo"})
        own = client.post(
            base + "/v1/chat/completions",
            json=CHAT,
            headers={"x-mock-mode": "echo", "authorization": "Bearer sk-client"},
        )
    assert ["authorization", "Bearer sk-operator-key"] in r.json()["headers"]
    assert ["authorization", "Bearer sk-client"] in own.json()["headers"]


def test_health_ready_metrics_and_unknown_paths(proxy_url):
    with httpx.Client() as client:
        assert client.get(proxy_url + "/healthz").json() == {"status": "ok"}
        assert client.get(proxy_url + "/readyz").status_code == 200
        client.post(proxy_url + "/v1/chat/completions", json=CHAT)
        client.post(proxy_url + "/v1/chat/completions", json=CHAT, headers={"x-mock-status": "503"})
        metrics = client.get(proxy_url + "/metrics").text
        missing = client.get(proxy_url + "/nope")
    assert (
        'stillroom_requests_total{method="POST",route="/v1/chat/completions",status_class="2xx"}'
        in metrics
    )
    assert 'status_class="5xx"' in metrics
    assert "stillroom_upstream_ttfb_seconds_bucket" in metrics
    assert "stillroom_upstream_latency_seconds_count" in metrics
    assert "stillroom_requests_in_flight 0.0" in metrics
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}


def test_added_latency_is_on_metrics(proxy_url):
    """``stillroom_proxy_added_seconds``: the proxy's own time, once per relayed exchange,
    small next to a mock upstream that takes 50 ms (which it must not include)."""
    with httpx.Client() as client:
        for headers in ({}, {"x-mock-latency-ms": "50"}):
            assert client.post(
                proxy_url + "/v1/chat/completions", json=CHAT, headers=headers
            ).is_success
        stream = {**CHAT, "stream": True}
        assert client.post(proxy_url + "/v1/chat/completions", json=stream).is_success
        metrics = client.get(proxy_url + "/metrics").text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("stillroom_proxy_added_seconds")
    }
    route = '{route="/v1/chat/completions"}'
    assert values["stillroom_proxy_added_seconds_count" + route] == 3
    assert values["stillroom_proxy_added_seconds_sum" + route] > 0
    # every one under 25 ms: the upstream's 50 ms are not in it
    under = 'stillroom_proxy_added_seconds_bucket{le="0.025",route="/v1/chat/completions"}'
    assert values[under] == 3
