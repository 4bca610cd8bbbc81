"""`stillroom mock`: a deterministic fake OpenAI upstream for tests and benchmarks.

The official `openai` SDK cannot tell it from the real API on the endpoints below, and it is cheap
enough to sit under a benchmark: a raw ASGI callable, bodies built with orjson, no routing
framework, no validation layer; each request costs ~25 µs of CPU for a plain chat answer.

    POST /v1/chat/completions   JSON; SSE with stream:true (text, tool calls, n, usage, [DONE])
    POST /v1/responses          JSON; SSE with named events and sequence numbers
    POST /v1/completions        legacy text completions, JSON or SSE
    POST /v1/embeddings         float or base64 (little-endian float32) vectors
    GET  /v1/models             GET /v1/models/{id}
    POST /v1/files              multipart upload (kept in memory); GET /v1/files[/{id}]
    /v1/fine_tuning/jobs        create, list, retrieve, events, cancel: a job walks
                                validating_files → queued → running → succeeded over three
                                retrieves, or fails (see `proxy._mock_fine_tuning`)
    GET  /_mock/requests        every /v1 request received (`RecordedRequest.as_json`), oldest first
    DELETE /_mock/requests      clears that log

Any other /v1 route gets OpenAI's 404 envelope. Answers derive from a sha256 of the request body
without `stream`/`stream_options` (so a streamed answer and a plain one agree), and `created` is a
constant, so the same request always gets the same body bytes. Each response carries OpenAI's
headers: `x-request-id: req_<16 hex of the body's sha256><log seq, 16 hex>`,
`openai-processing-ms`, `openai-version` and static `x-ratelimit-*` values.

`MockOptions` scripts faults for every request; these request headers override it per request:

    x-mock-latency-ms     delay before the response starts (before headers)
    x-mock-first-byte-ms  delay after the headers, before the first body byte
    x-mock-gap-ms         delay between stream events
    x-mock-chunks         words (= content chunks = completion tokens) in an answer
    x-mock-status         this status with an OpenAI error envelope (429 adds retry-after: 1);
                          a status under 400 turns an error off
    x-mock-cut-after      streamed bodies: send N events (or drip/huge pieces), then close
    x-mock-mode           invalid_json | html_502 | empty | binary | gzip | huge:<MiB> |
                          drip:<bytes>:<every_ms> | redirect:<url> | reset_after:<N> |
                          close_after_body | echo   (see `Plan` for each)

Every delay watches `receive()` for `http.disconnect`, so a client that leaves while the mock waits
is noticed at once and the time lands in `disconnected_at`. A stream without delays checks once,
before its last event.

On the wire (uvicorn, HTTP/1.1): a cut stream is the status line, headers
(`transfer-encoding: chunked`) and N complete chunks, then a FIN with no `0\\r\\n\\r\\n` terminator;
httpx raises `RemoteProtocolError` ("incomplete chunked read"), which the SDK turns into
`APIConnectionError`. `reset_after` ends with an RST instead, and the client may lose events that
were in flight. `close_after_body` reads the whole request, then sends a FIN and no byte of reply;
httpx raises `RemoteProtocolError("Server disconnected without sending a response.")`.

To close the connection the mock reaches the server's transport through `send.__self__.transport`
(uvicorn's httptools and h11 protocols both have it) and waits until the server has seen the
disconnect, so uvicorn logs nothing. The plain-ASGI alternatives are worse: returning without
finishing makes uvicorn log "ASGI callable returned without completing response." at ERROR for
every cut, and returning before `http.response.start` makes it answer 500 instead of closing.
On a server without that attribute the mock falls back to returning without finishing.
"""

from __future__ import annotations

import gzip
import hashlib
import time
from collections import deque
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from proxy import _mock_chat as chat
from proxy import _mock_faults as faults
from proxy import _mock_payloads as payloads
from proxy._mock_embeddings import EmbeddingTable, embeddings
from proxy._mock_exchange import Exchange, RecordedRequest, read_body
from proxy._mock_fine_tuning import FineTuning, NotFound
from proxy._mock_plan import InvalidMockHeader, Plan, apply_headers, seconds
from proxy._mock_responses import response_events, response_object

LOG_LIMIT = 10_000  # requests kept for GET /_mock/requests; older ones fall off
_JSON = b"application/json"
_SSE = b"text/event-stream; charset=utf-8"
_header_name = itemgetter(0)


@dataclass(frozen=True, slots=True)
class MockOptions:
    """Faults for every request (`stillroom mock` flags); x-mock-* headers override them."""

    latency_ms: float = 0.0  # delay before the response starts (before headers)
    first_byte_ms: float = 0.0  # delay after the headers, before the first body byte
    error_status: int | None = None  # answer every /v1 request with this status + error envelope
    cut_after: int | None = None  # streams: close the connection after N events, no terminator
    chunks: int | None = None  # words per answer; None derives 8-32 from the request hash
    gap_ms: float = 0.0  # delay between stream events


def create_mock_app(options: MockOptions) -> MockUpstream:
    """The mock as a plain ASGI3 callable (it also answers the lifespan protocol)."""
    return MockUpstream(options)


def _plan_from(options: MockOptions) -> Plan:
    status = options.error_status
    return Plan(
        latency=seconds(options.latency_ms),
        first_byte=seconds(options.first_byte_ms),
        gap=seconds(options.gap_ms),
        chunks=options.chunks,
        status=status if status is not None and status >= 400 else None,
        cut_after=options.cut_after,
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise payloads.InvalidRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(value, dict):
        raise payloads.InvalidRequest("The request body must be a JSON object.")
    return value


class MockUpstream:
    """The mock's ASGI app. `requests` is the bounded log behind GET /_mock/requests."""

    def __init__(self, options: MockOptions) -> None:
        self.options = options
        self.requests: deque[RecordedRequest] = deque(maxlen=LOG_LIMIT)
        self._seq = 0
        self._plan = _plan_from(options)
        self._embedding_table: EmbeddingTable | None = None
        self.fine_tuning = FineTuning()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/v1/"):
                await self._serve_api(scope, receive, send)
            elif path == "/_mock/requests":
                await self._serve_log(scope["method"], send)
            else:
                body = faults.error_envelope(404, f"Invalid URL ({scope['method']} {path})")
                await _reply(send, 404, body)
        elif kind == "lifespan":
            await _run_lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _serve_log(self, method: str, send: Send) -> None:
        if method == "GET":
            await _reply(send, 200, orjson.dumps([r.as_json() for r in self.requests]))
        elif method == "DELETE":
            deleted = len(self.requests)
            self.requests.clear()
            await _reply(send, 200, orjson.dumps({"deleted": deleted}))
        else:
            await _reply(send, 405, faults.error_envelope(405, f"Invalid method {method}."))

    async def _serve_api(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        body, complete = await read_body(receive)
        digest = hashlib.sha256(body).digest()
        self._seq += 1
        record = RecordedRequest(self._seq, scope, digest, len(body))
        self.requests.append(record)
        exchange = Exchange(record, receive, send, started)
        if not complete:
            exchange.client_left()
            return
        plan = self._plan
        headers = scope["headers"]
        if b"x-mock-" in b"\n".join(map(_header_name, headers)):  # 2x faster than a loop
            overrides = [(k, v) for k, v in headers if k.startswith(b"x-mock-")]
            try:
                plan = apply_headers(plan, overrides)
            except InvalidMockHeader as exc:
                error = faults.error_envelope(400, str(exc), code="invalid_mock_header")
                return await exchange.reply(400, _JSON, error)
        if plan.latency and not await exchange.pause(plan.latency):
            return
        if plan.mode == "close_after_body":
            return await exchange.close_connection(reset=False)
        if plan.status is not None:
            retry = ((b"retry-after", b"1"),) if plan.status == 429 else ()
            error = faults.error_envelope(plan.status)
            return await exchange.reply(
                plan.status, _JSON, error, wait=plan.first_byte, extra=retry
            )
        if plan.mode is None:
            status, answer = self._answer(scope["method"], scope["path"], body, plan, scope)
            if isinstance(answer, bytes):
                return await exchange.reply(status, _JSON, answer, wait=plan.first_byte)
            await exchange.start(status, _SSE)
            return await exchange.stream(iter(answer), plan, gap=plan.gap)
        await self._misbehave(exchange, scope, body, plan)

    async def _misbehave(self, exchange: Exchange, scope: Scope, body: bytes, plan: Plan) -> None:
        mode, wait = plan.mode, plan.first_byte
        if mode == "invalid_json":
            await exchange.reply(200, _JSON, faults.INVALID_JSON, wait=wait)
        elif mode == "html_502":
            await exchange.reply(502, b"text/html; charset=utf-8", faults.HTML_502, wait=wait)
        elif mode == "empty":
            await exchange.reply(200, _JSON, b"", wait=wait)
        elif mode == "binary":
            await exchange.reply(200, _JSON, faults.BINARY, wait=wait)
        elif mode == "redirect":
            extra = ((b"location", plan.location),)
            await exchange.reply(307, b"text/plain; charset=utf-8", b"", extra=extra)
        elif mode == "echo":
            await exchange.reply(200, _JSON, orjson.dumps(exchange.record.describe()), wait=wait)
        elif mode == "huge":
            request = _loads_or_empty(body)
            model = request.get("model")
            model = model if isinstance(model, str) else "gpt-4o-mini"
            if request.get("stream") is True:
                await exchange.start(200, _SSE)
                await exchange.stream(faults.huge_events(model, plan.size), plan, gap=plan.gap)
            else:
                size, pieces = faults.huge_json(model, plan.size)
                await exchange.start(200, _JSON, size)
                await exchange.stream(pieces, plan, gap=plan.gap)
        else:  # gzip and drip send the real answer differently
            status, answer = self._answer(scope["method"], scope["path"], body, plan, scope)
            data = answer if isinstance(answer, bytes) else b"".join(answer)
            content_type = _JSON if isinstance(answer, bytes) else _SSE
            if mode == "gzip":
                packed = gzip.compress(data, mtime=0)
                extra = ((b"content-encoding", b"gzip"),)
                await exchange.reply(status, content_type, packed, wait=wait, extra=extra)
            else:
                length = len(data) if isinstance(answer, bytes) else None
                await exchange.start(status, content_type, length)
                step = plan.size
                drips = (data[i : i + step] for i in range(0, len(data), step))
                await exchange.stream(drips, plan, gap=plan.every)

    def _answer(
        self, method: str, path: str, body: bytes, plan: Plan, scope: Scope
    ) -> tuple[int, bytes | list[bytes]]:
        """(status, JSON body) or (status, SSE events) for a /v1 route."""
        if path.startswith(("/v1/files", "/v1/fine_tuning/")):
            return self._fine_tuning(method, path, body, scope)
        try:
            if method == "POST":
                if path == "/v1/chat/completions":
                    request = _json_object(body)
                    if request.get("stream") is True:
                        return 200, chat.chat_events(request, _seed(request), plan.chunks)
                    return 200, chat.chat_completion(request, _seed(request), plan.chunks)
                if path == "/v1/responses":
                    request = _json_object(body)
                    if request.get("stream") is True:
                        return 200, response_events(request, _seed(request), plan.chunks)
                    return 200, response_object(request, _seed(request), plan.chunks)
                if path == "/v1/completions":
                    request = _json_object(body)
                    if request.get("stream") is True:
                        return 200, chat.completion_events(request, _seed(request), plan.chunks)
                    return 200, chat.completion(request, _seed(request), plan.chunks)
                if path == "/v1/embeddings":
                    if self._embedding_table is None:
                        self._embedding_table = EmbeddingTable()
                    return 200, embeddings(_json_object(body), self._embedding_table)
            elif method == "GET":
                if path == "/v1/models":
                    return 200, payloads.model_list()
                if path.startswith("/v1/models/"):
                    model = path[len("/v1/models/") :]
                    if model in payloads.MODELS:
                        return 200, orjson.dumps(payloads.model_object(model))
                    message = f"The model `{model}` does not exist or you do not have access to it."
                    return 404, faults.error_envelope(404, message, code="model_not_found")
        except payloads.InvalidRequest as exc:
            return 400, faults.error_envelope(400, exc.message, param=exc.param)
        return 404, faults.error_envelope(404, f"Invalid URL ({method} {path})")

    def _fine_tuning(
        self, method: str, path: str, body: bytes, scope: Scope
    ) -> tuple[int, bytes | list[bytes]]:
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        try:
            found = self.fine_tuning.answer(
                method, path, scope.get("query_string", b""), content_type, body
            )
        except payloads.InvalidRequest as exc:
            codes = {"training_file": "invalid_training_file", "model": "model_not_available"}
            code = codes.get(exc.param or "")
            return 400, faults.error_envelope(400, exc.message, param=exc.param, code=code)
        except NotFound as exc:
            return 404, faults.error_envelope(404, exc.message, param=exc.param)
        if found is None:
            return 404, faults.error_envelope(404, f"Invalid URL ({method} {path})")
        return found[0], orjson.dumps(found[1])


def _seed(request: dict[str, Any]) -> bytes:
    """What an answer derives from: the request minus how it is delivered, so a streamed answer
    and a plain one to the same request say the same thing."""
    if "stream" in request or "stream_options" in request:
        request = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
    return hashlib.sha256(orjson.dumps(request)).digest()


def _loads_or_empty(body: bytes) -> dict[str, Any]:
    try:
        return _json_object(body)
    except payloads.InvalidRequest:
        return {}


async def _reply(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _run_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
