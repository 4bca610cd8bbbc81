"""`stillroom mock` against the official openai SDK (sync and async) and raw httpx, on a real
uvicorn server; plus its fault scripting, request log and disconnect recording."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from proxy.mock import LOG_LIMIT, MockOptions, create_mock_app
from tests._server import serve_in_thread

USER = [{"role": "user", "content": "Tell me about the sea."}]
CHAT = {"model": "gpt-4o-mini", "messages": USER}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture(scope="module")
def client(mock_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{mock_url}/v1", api_key="sk-test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def http(mock_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock_url, timeout=10) as raw:
        yield raw


def post(http: httpx.Client, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return http.post(path, content=orjson.dumps(body), headers=_headers(headers))


def _headers(headers: dict[str, str]) -> dict[str, str]:
    return {"content-type": "application/json"} | {
        k.replace("_", "-"): v for k, v in headers.items()
    }


def find_record(mock_url: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll /_mock/requests until a row satisfies `match` (deadline 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        rows = httpx.get(f"{mock_url}/_mock/requests").json()
        found = [row for row in rows if match(row)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, "the mock never recorded the expected state"
        time.sleep(0.01)


def body_sha(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body)).hexdigest()


# --- the endpoints, through the SDK ----------------------------------------------------------


def test_chat_completion_looks_like_openai(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        **CHAT, extra_headers={"x-mock-chunks": "7"}
    )
    completion = raw.parse()
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.model == "gpt-4o-mini"
    assert completion.id.startswith("chatcmpl-") and completion.created == 1_735_689_600
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert len(choice.message.content.split()) == 7 and choice.message.content.endswith(".")
    usage = completion.usage
    assert usage.completion_tokens == 7
    assert usage.total_tokens == usage.prompt_tokens + 7
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert completion._request_id.startswith("req_")
    headers = raw.headers
    assert headers["openai-version"] == "2020-10-01"
    assert int(headers["openai-processing-ms"]) >= 0
    assert headers["x-ratelimit-remaining-requests"] == "9999"
    assert headers["x-ratelimit-reset-tokens"] == "2ms"


def test_usage_counts_reasoning_and_cached_tokens(client: openai.OpenAI) -> None:
    long_prompt = [{"role": "user", "content": "word " * 2000}]
    completion = client.chat.completions.create(model="o4-mini", messages=long_prompt)
    usage = completion.usage
    assert usage.prompt_tokens > 1024
    assert usage.prompt_tokens_details.cached_tokens > 0
    assert usage.prompt_tokens_details.cached_tokens % 128 == 0
    assert usage.completion_tokens_details.reasoning_tokens > 0


def test_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        **CHAT, max_completion_tokens=3, extra_headers={"x-mock-chunks": "10"}
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_same_request_gets_the_same_bytes(http: httpx.Client) -> None:
    stream = CHAT | {"stream": True, "stream_options": {"include_usage": True}}
    for body in (CHAT, stream, {"model": "gpt-4.1", "input": "hi", "stream": True}):
        path = "/v1/responses" if "input" in body else "/v1/chat/completions"
        first, second = post(http, path, body), post(http, path, body)
        assert first.status_code == 200 and first.content == second.content
        assert first.headers["x-request-id"] != second.headers["x-request-id"]
    other = post(
        http, "/v1/chat/completions", CHAT | {"messages": [{"role": "user", "content": "?"}]}
    )
    assert other.content != post(http, "/v1/chat/completions", CHAT).content


def test_n_gives_n_different_choices(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(**CHAT, n=2)
    first, second = completion.choices
    assert (first.index, second.index) == (0, 1)
    assert first.message.content != second.message.content
    texts = {0: "", 1: ""}
    for chunk in client.chat.completions.create(**CHAT, n=2, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts[0] and texts[1] and texts[0] != texts[1]


def test_chat_stream_with_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            **CHAT,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-chunks": "5"},
        )
    )
    role, *content, finish, usage = chunks
    assert role.choices[0].delta.role == "assistant" and role.choices[0].delta.content == ""
    assert len(content) == 5 and all(c.choices[0].delta.content for c in content)
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1
    plain = client.chat.completions.create(**CHAT, extra_headers={"x-mock-chunks": "5"})
    streamed = "".join(c.choices[0].delta.content for c in content)
    assert streamed == plain.choices[0].message.content  # same request, same answer


def test_chat_stream_wire_format(http: httpx.Client) -> None:
    body = orjson.dumps(CHAT | {"stream": True})
    headers = _headers({"x-mock-chunks": "3"})
    with http.stream("POST", "/v1/chat/completions", content=body, headers=headers) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        pieces = list(response.iter_raw())
    # one ASGI send per event, so one HTTP chunk per event on the wire
    assert len(pieces) == 6 and all(p.startswith(b"data: ") and p.endswith(b"\n\n") for p in pieces)
    assert pieces[-1] == b"data: [DONE]\n\n"
    assert b'"usage"' not in b"".join(pieces)


def test_parallel_tool_calls_reassemble_in_the_sdk_stream_helper(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Weather and time in Paris?"}]
    with client.chat.completions.stream(
        model="gpt-4o", messages=messages, tools=[WEATHER, CLOCK]
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    weather = json.loads(calls[0].function.arguments)
    assert isinstance(weather["city"], str) and weather["unit"] in ("c", "f")
    assert json.loads(calls[1].function.arguments) == {}
    plain = client.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[WEATHER, CLOCK]
    )
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        (c.id, c.function.name, c.function.arguments) for c in plain.choices[0].message.tool_calls
    ]


def test_tool_call_arguments_arrive_in_several_fragments(client: openai.OpenAI) -> None:
    fragments: dict[int, list[str]] = {}
    for chunk in client.chat.completions.create(**CHAT, tools=[WEATHER, CLOCK], stream=True):
        for call in chunk.choices[0].delta.tool_calls or []:
            fragments.setdefault(call.index, []).append(call.function.arguments)
    assert sorted(fragments) == [0, 1]
    assert fragments[0][0] == "" and len(fragments[0]) > 3
    assert json.loads("".join(fragments[0]))["city"]


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"parallel_tool_calls": False}, ["get_weather"]),
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, ["get_time"]),
        ({"tool_choice": "none"}, None),
    ],
)
def test_tool_choice_and_parallel_flag(
    client: openai.OpenAI, extra: dict[str, Any], names: Any
) -> None:
    completion = client.chat.completions.create(**CHAT, tools=[WEATHER, CLOCK], **extra)
    calls = completion.choices[0].message.tool_calls
    assert (names is None and calls is None) or [c.function.name for c in calls] == names


def test_a_tool_result_gets_a_text_answer(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(**CHAT, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *USER,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content


def test_responses_create(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4.1", input="hello", instructions="Be terse.")
    assert response.status == "completed" and response.id.startswith("resp_")
    assert response.output[0].type == "message" and response.output_text.endswith(".")
    assert response.instructions == "Be terse."
    usage = response.usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_responses_stream_ends_with_completed(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="gpt-4.1", input="hello", extra_headers={"x-mock-chunks": "4"}
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed" and types.count("response.output_text.delta") == 4
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == deltas and final.usage.output_tokens == 4


def test_responses_stream_uses_named_events(http: httpx.Client) -> None:
    raw = post(http, "/v1/responses", {"model": "gpt-4.1", "input": "hi", "stream": True}).content
    records = raw.decode().split("\n\n")[:-1]
    for record in records:
        event, data = record.split("\n")
        assert event[len("event: ") :] == json.loads(data[len("data: ") :])["type"]
    assert b"[DONE]" not in raw


def test_responses_function_calls(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "name": f["function"]["name"],
            "parameters": f["function"]["parameters"],
        }
        for f in (WEATHER, CLOCK)
    ]
    with client.responses.stream(model="o4-mini", input="weather?", tools=tools) as stream:
        deltas = [e for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert [(item.type, item.name) for item in final.output] == [
        ("function_call", "get_weather"),
        ("function_call", "get_time"),
    ]
    assert json.loads(final.output[0].arguments)["city"] and len(deltas) > 3
    assert final.usage.output_tokens_details.reasoning_tokens > 0
    single = client.responses.create(
        model="gpt-4.1", input="x", tools=tools, parallel_tool_calls=False
    )
    assert [item.name for item in single.output] == ["get_weather"]


def test_responses_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4.1", input="hi", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"


def test_legacy_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Say", extra_headers={"x-mock-chunks": "20"}
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason == "length"  # the legacy max_tokens default is 16
    assert len(completion.choices[0].text.split()) == 16
    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt=["a", "b"],
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-chunks": "3"},
        )
    )
    assert sorted({c.choices[0].index for c in chunks if c.choices}) == [0, 1]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_embeddings_base64_decodes_to_the_float_values(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    inputs = ["alpha", "beta"]
    decoded = client.embeddings.create(model="text-embedding-3-small", input=inputs)
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=inputs, encoding_format="float"
    )
    assert [d.embedding for d in decoded.data] == [d.embedding for d in floats.data]
    first = floats.data[0].embedding
    assert len(first) == 1536 and abs(sum(x * x for x in first) - 1) < 1e-5
    assert floats.data[0].embedding != floats.data[1].embedding
    body = {"model": "text-embedding-3-large", "input": "alpha", "encoding_format": "base64"}
    wire = post(http, "/v1/embeddings", body | {"dimensions": 8}).json()
    assert isinstance(wire["data"][0]["embedding"], str)
    large = post(http, "/v1/embeddings", body).json()["data"][0]["embedding"]
    assert len(large) == 16384  # 3072 float32s, base64-encoded


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    assert client.models.retrieve("gpt-4o").owned_by == "system"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-nope")
    assert caught.value.code == "model_not_found"


def test_bad_requests_get_400_envelopes(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert caught.value.param == "messages"
    not_json = http.post("/v1/chat/completions", content=b"{nope")
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_is_a_404_envelope(http: httpx.Client) -> None:
    for method, path in (("POST", "/v1/nope"), ("GET", "/v1/chat/completions"), ("GET", "/x")):
        response = http.request(method, path)
        assert response.status_code == 404
        assert response.json() == {
            "error": {
                "message": f"Invalid URL ({method} {path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (409, openai.ConflictError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_scripted_status_raises_the_sdk_error(
    client: openai.OpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error) as caught:
        client.chat.completions.create(**CHAT, extra_headers={"x-mock-status": str(status)})
    assert caught.value.status_code == status and caught.value.request_id.startswith("req_")
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    assert (caught.value.response.headers.get("retry-after") == "1") == (status == 429)


def test_options_apply_to_every_request_and_headers_override_them() -> None:
    options = MockOptions(error_status=503, chunks=2, cut_after=0)
    with serve_in_thread(create_mock_app(options)) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk:
            with pytest.raises(openai.InternalServerError):
                sdk.models.list()
            ok = sdk.chat.completions.create(**CHAT, extra_headers={"x-mock-status": "200"})
            assert len(ok.choices[0].message.content.split()) == 2  # JSON is not cut
            cut = sdk.chat.completions.create(
                **CHAT, stream=True, extra_headers={"x-mock-status": "200"}
            )
            with pytest.raises(openai.APIConnectionError):
                list(cut)


def test_invalid_mock_header_is_a_400(http: httpx.Client) -> None:
    for name, value in (("x-mock-chunks", "0"), ("x-mock-mode", "nope"), ("x-mock-latncy-ms", "1")):
        response = post(http, "/v1/chat/completions", CHAT, **{name: value})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_mock_header"


# --- fault modes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "status", "content_type", "check"),
    [
        ("invalid_json", 200, "application/json", lambda b: b and not _parses(b)),
        ("html_502", 502, "text/html; charset=utf-8", lambda b: b.startswith(b"<html>")),
        ("empty", 200, "application/json", lambda b: b == b""),
        ("binary", 200, "application/json", lambda b: b and not _decodes(b)),
    ],
)
def test_broken_bodies(
    http: httpx.Client, mode: str, status: int, content_type: str, check: Callable[[bytes], bool]
) -> None:
    response = post(http, "/v1/chat/completions", CHAT, x_mock_mode=mode)
    assert response.status_code == status
    assert response.headers["content-type"] == content_type
    assert check(response.content)


def _parses(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _decodes(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_gzip_mode(http: httpx.Client, client: openai.OpenAI) -> None:
    plain = post(http, "/v1/chat/completions", CHAT)
    headers = _headers({"x-mock-mode": "gzip"})
    with http.stream(
        "POST", "/v1/chat/completions", content=orjson.dumps(CHAT), headers=headers
    ) as r:
        assert r.headers["content-encoding"] == "gzip"
        wire = b"".join(r.iter_raw())
    assert wire[:2] == b"\x1f\x8b" and gzip.decompress(wire) == plain.content
    assert client.chat.completions.create(**CHAT, extra_headers={"x-mock-mode": "gzip"}).choices


def test_redirect_mode(http: httpx.Client) -> None:
    response = post(http, "/v1/chat/completions", CHAT, x_mock_mode="redirect:http://127.0.0.1:9/x")
    assert response.status_code == 307 and response.headers["location"] == "http://127.0.0.1:9/x"


def test_echo_mode_describes_the_request(http: httpx.Client) -> None:
    body = orjson.dumps(CHAT)
    response = http.post(
        "/v1/chat/completions?a=1",
        content=body,
        headers={"x-mock-mode": "echo", "X-Custom": "Kept", "authorization": "Bearer sk-1"},
    )
    echo = response.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("POST", "/v1/chat/completions", "a=1")
    assert ["x-custom", "Kept"] in echo["headers"]
    assert ["authorization", "Bearer sk-1"] in echo["headers"]
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest() and echo["body_len"] == len(body)


def test_huge_json_and_sse(http: httpx.Client, client: openai.OpenAI) -> None:
    size = 1024 * 1024
    response = post(http, "/v1/chat/completions", CHAT, x_mock_mode="huge:1")
    assert len(response.content) == size == int(response.headers["content-length"])
    assert response.json()["choices"][0]["finish_reason"] == "length"
    streamed = post(http, "/v1/chat/completions", CHAT | {"stream": True}, x_mock_mode="huge:1.5")
    assert len(streamed.content) == size * 3 // 2 and streamed.content.endswith(b"data: [DONE]\n\n")
    chunks = client.chat.completions.create(
        **CHAT, stream=True, extra_headers={"x-mock-mode": "huge:1"}
    )
    assert sum(len(c.choices[0].delta.content or "") for c in chunks) > size * 0.9


def test_drip_mode_sends_the_same_bytes_slowly(http: httpx.Client) -> None:
    plain = post(http, "/v1/chat/completions", CHAT).content
    started = time.perf_counter()
    dripped = post(http, "/v1/chat/completions", CHAT, x_mock_mode="drip:200:15")
    pauses = (len(plain) - 1) // 200  # one before every piece but the first
    assert dripped.content == plain and time.perf_counter() - started >= pauses * 0.015


# --- cuts, closes and disconnects --------------------------------------------------------------


def test_cut_after_ends_the_stream_without_a_terminator(
    client: openai.OpenAI, mock_url: str
) -> None:
    seen = []
    stream = client.chat.completions.create(
        **CHAT, stream=True, extra_headers={"x-mock-cut-after": "3"}
    )
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 3
    row = find_record(
        mock_url, lambda r: r["request_id"] == stream.response.headers["x-request-id"]
    )
    assert row["completed"] is False and row["disconnected_at"] is None


def test_reset_after_is_a_connection_error(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        **CHAT, stream=True, extra_headers={"x-mock-mode": "reset_after:1"}
    )
    with pytest.raises(openai.APIConnectionError):
        list(stream)


def test_close_after_body_reads_the_body_and_says_nothing(
    http: httpx.Client, mock_url: str
) -> None:
    body = CHAT | {"messages": [{"role": "user", "content": "close " * 100}]}
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        post(http, "/v1/chat/completions", body, x_mock_mode="close_after_body")
    row = find_record(mock_url, lambda r: r["body_sha256"] == body_sha(body))
    assert row["body_len"] == len(orjson.dumps(body)) and row["completed"] is False


@pytest.mark.parametrize(
    "headers",
    [
        {"x-mock-latency-ms": "10000"},
        {"x-mock-first-byte-ms": "10000"},
        {"x-mock-gap-ms": "10000", "x-mock-chunks": "3"},
    ],
)
@pytest.mark.anyio
async def test_a_client_leaving_mid_wait_is_recorded(
    mock_url: str, headers: dict[str, str]
) -> None:
    body = CHAT | {"stream": True, "messages": [{"role": "user", "content": repr(headers)}]}
    sent_at = time.time()
    async with httpx.AsyncClient(base_url=mock_url, timeout=0.1) as raw:
        with pytest.raises(httpx.ReadTimeout):
            content = orjson.dumps(body)
            async with raw.stream(
                "POST", "/v1/chat/completions", content=content, headers=headers
            ) as r:
                async for _ in r.aiter_raw():  # with a gap, the first event comes at once
                    pass
    row = await asyncio.to_thread(
        find_record, mock_url, lambda r: r["body_sha256"] == body_sha(body) and r["disconnected_at"]
    )
    assert row["completed"] is False and sent_at <= row["disconnected_at"] <= time.time()


def test_log_lists_and_clears(mock_url: str, http: httpx.Client) -> None:
    body = CHAT | {"messages": [{"role": "user", "content": "log me"}]}
    post(http, "/v1/chat/completions?x=1", body, x_trace="t1")
    row = find_record(mock_url, lambda r: r["body_sha256"] == body_sha(body))
    assert set(row) == {
        "seq", "request_id", "method", "path", "query", "headers", "body_sha256", "body_len",
        "disconnected_at", "completed",
    }  # fmt: skip
    assert row["query"] == "x=1" and ["x-trace", "t1"] in row["headers"] and row["completed"]
    assert http.delete("/_mock/requests").json()["deleted"] >= 1
    assert http.get("/_mock/requests").json() == []
    assert http.post("/_mock/requests").status_code == 405


# --- async SDK and in-process ASGI -------------------------------------------------------------


@pytest.mark.anyio
async def test_async_sdk(mock_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{mock_url}/v1", api_key="k", max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(**CHAT)
        text = ""
        async for chunk in await sdk.chat.completions.create(**CHAT, stream=True):
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        assert completion.choices[0].message.content and text
        async with sdk.responses.stream(model="gpt-4.1", input="hi") as stream:
            async for _ in stream:
                pass
            assert (await stream.get_final_response()).status == "completed"
        with pytest.raises(openai.RateLimitError):
            await sdk.embeddings.create(
                model="text-embedding-3-small", input="x", extra_headers={"x-mock-status": "429"}
            )


@pytest.mark.anyio
async def test_in_process_asgi_lifespan_and_bounded_log() -> None:
    app = create_mock_app(MockOptions())
    assert app.requests.maxlen == LOG_LIMIT
    lifespan = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(lifespan)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
