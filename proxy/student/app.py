"""``create_student_app(load)``: the OpenAI-compatible server of ``stillroom student serve``.

A client, or later Stillroom's router, talks to the student through the API the teacher had::

    GET  /v1/models              the one model, under its served name
    GET  /v1/models/{name}
    POST /v1/chat/completions    JSON, or SSE with "stream": true (usage with include_usage)
    GET  /healthz                alive once the model is loaded

The lifespan loads the model (``load`` runs in a worker thread; uvicorn starts listening only
when it is done) and owns one generation thread: requests queue for it, so one generation runs
at a time and the event loop never waits on the model. A streamed answer reaches the loop
piece by piece through ``call_soon_threadsafe``; a client that disconnects sets the
generation's stop flag, and the model stops at its next token.

Tool calls are read back from the Hermes-style text (``proxy.student.toolcalls``) when the
request has tools; a stream holds back text from ``<tool_call>`` on and sends the calls as
OpenAI's tool-call deltas at the end. Every chat answer, error or not, carries
``X-Stillroom-Served-By: student:<name>``. Errors use OpenAI's envelope (``proxy.errors``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict

import anyio
import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from proxy.errors import InvalidRequest, ProxyError, RouteNotFound
from proxy.student.model import Generation, PromptError, SamplingParams, StudentModel
from proxy.student.request import ChatRequest, ContextLengthExceeded, parse_chat_request
from proxy.student.toolcalls import ToolCall, ToolCallGate, split_tool_calls
from proxy.types import JSONObject

logger = logging.getLogger("stillroom.student")

SERVED_BY = "X-Stillroom-Served-By"


class GenerationFailed(ProxyError):
    status_code = 500
    error_type = "server_error"
    code = "generation_failed"


class ModelNotFound(RouteNotFound):
    code = "model_not_found"


class StudentState(TypedDict):
    """What the lifespan owns; handlers read it from ``request.state``."""

    student: StudentModel
    generator: ThreadPoolExecutor  # one thread: one generation at a time
    max_new_tokens: int
    created: int


def create_student_app(
    load: Callable[[], StudentModel], *, max_new_tokens: int = 512
) -> StudentApp:
    """The app; ``load`` (e.g. ``functools.partial(load_student, path)``) runs at startup.

    ``max_new_tokens`` is the longest answer: the default for a request without
    ``max_tokens``, and the cap for one that asks for more.
    """
    return StudentApp(load, max_new_tokens=max_new_tokens)


class StudentApp:
    """The ASGI callable: a Starlette app for the routes, and our own lifespan around it.

    The lifespan is handled here rather than by Starlette so that a model that cannot load is
    one log line (Starlette would log its traceback); what it opens reaches the handlers as
    the lifespan state, ``request.state``.
    """

    def __init__(self, load: Callable[[], StudentModel], *, max_new_tokens: int) -> None:
        self._load = load
        self._max_new_tokens = max_new_tokens
        self._site = Starlette(
            routes=[
                Route("/v1/chat/completions", _chat_completions, methods=["POST"]),
                Route("/v1/models", _list_models, methods=["GET"]),
                Route("/v1/models/{name:path}", _get_model, methods=["GET"]),
                Route("/healthz", _healthz, methods=["GET", "HEAD"]),
            ],
            exception_handlers={404: _not_found, 405: _not_found},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self._site(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        if "state" not in scope:
            logger.error("the ASGI server has no lifespan state; run the student under uvicorn")
            await send({"type": "lifespan.startup.failed", "message": ""})
            return
        try:
            student = await anyio.to_thread.run_sync(self._load)
        except Exception as exc:  # whatever the loader raised: one line, and no start
            logger.error("could not load the student: %s", exc)
            await send({"type": "lifespan.startup.failed", "message": ""})
            return
        generator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="student-generate")
        scope["state"].update(
            StudentState(
                student=student,
                generator=generator,
                max_new_tokens=self._max_new_tokens,
                created=int(time.time()),
            )
        )
        logger.info("serving student %s", student.name)
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        shutdown = functools.partial(generator.shutdown, wait=True, cancel_futures=True)
        await anyio.to_thread.run_sync(shutdown)
        await send({"type": "lifespan.shutdown.complete"})


def _state(request: Request) -> StudentState:
    return StudentState(
        student=request.state.student,
        generator=request.state.generator,
        max_new_tokens=request.state.max_new_tokens,
        created=request.state.created,
    )


def _json(
    value: object, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(value), status_code, headers, media_type="application/json")


def _error(exc: ProxyError, headers: Mapping[str, str] | None = None) -> Response:
    return Response(exc.to_json(), exc.status_code, headers, media_type="application/json")


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(RouteNotFound(f"Invalid URL ({request.method} {request.url.path})"))


async def _healthz(request: Request) -> Response:
    return _json({"status": "ok", "model": _state(request)["student"].name})


def _model_object(state: StudentState) -> JSONObject:
    name = state["student"].name
    return {"id": name, "object": "model", "created": state["created"], "owned_by": "stillroom"}


async def _list_models(request: Request) -> Response:
    return _json({"object": "list", "data": [_model_object(_state(request))]})


async def _get_model(request: Request) -> Response:
    state = _state(request)
    name = request.path_params["name"]
    if name != state["student"].name:
        return _error(ModelNotFound(f"The model '{name}' does not exist", param="model"))
    return _json(_model_object(state))


async def _chat_completions(request: Request) -> Response:
    state = _state(request)
    student = state["student"]
    headers = {SERVED_BY: f"student:{student.name}"}
    try:
        chat = parse_chat_request(await request.body())
        prompt = await anyio.to_thread.run_sync(student.encode_chat, chat.messages, chat.tools)
        params = _sampling(chat, len(prompt), student.context_length, state["max_new_tokens"])
    except PromptError as exc:
        return _error(InvalidRequest(str(exc), param="messages"), headers)
    except InvalidRequest as exc:
        return _error(exc, headers)
    answer = _Answer(student.name, len(prompt), parse_tools=chat.tools is not None)
    if chat.stream:
        stop = threading.Event()
        events = _stream(state["generator"], student, prompt, params, answer, chat, stop)
        return _EventStream(events, on_close=stop.set, headers=headers)
    try:
        generation = await _generate(state["generator"], student, prompt, params, request.receive)
    except Exception:  # the model failed (out of memory…): OpenAI's envelope, not a traceback
        logger.exception("generation failed")
        return _error(GenerationFailed("The student failed while generating."), headers)
    return _json(answer.completion(generation), headers=headers)


async def _generate(
    generator: ThreadPoolExecutor,
    student: StudentModel,
    prompt: list[int],
    params: SamplingParams,
    receive: Receive,
) -> Generation:
    """A whole answer from the generation thread; it stops early when the client leaves (or
    the server cancels the request), so an abandoned request does not hold the queue."""
    stop = threading.Event()
    job = functools.partial(student.generate, prompt, params, should_stop=stop.is_set)
    future = generator.submit(job)

    async def stop_on_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        stop.set()

    try:
        async with anyio.create_task_group() as watch:
            watch.start_soon(stop_on_disconnect)
            try:
                generation = await asyncio.wrap_future(future)
            finally:
                watch.cancel_scope.cancel()
    finally:
        stop.set()
        future.cancel()  # still queued: never start it
    return generation


def _sampling(
    chat: ChatRequest, prompt_tokens: int, context: int | None, cap: int
) -> SamplingParams:
    """The request's sampling, its answer length capped and checked against the context.

    Without ``max_tokens`` the answer may use what the context leaves, up to ``cap``; with it,
    prompt plus ``max_tokens`` must fit, as OpenAI checks.
    """
    wanted = min(chat.max_tokens, cap) if chat.max_tokens is not None else cap
    if context is not None:
        room = context - prompt_tokens
        if chat.max_tokens is None and room > 0:
            wanted = min(wanted, room)
        if prompt_tokens + wanted > context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the messages, "
                f"{wanted} in the completion). Please reduce the length of the messages or "
                "completion.",
                param="messages",
            )
    return SamplingParams(
        max_new_tokens=wanted,
        temperature=chat.temperature,
        top_p=chat.top_p,
        seed=chat.seed,
        stop=chat.stop,
    )


class _Answer:
    """Builds the response objects of one request: the completion, or its stream's chunks."""

    def __init__(self, model: str, prompt_tokens: int, *, parse_tools: bool) -> None:
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.parse_tools = parse_tools

    def _head(self, kind: str) -> JSONObject:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def usage(self, completion_tokens: int) -> JSONObject:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def completion(self, generation: Generation) -> JSONObject:
        content: str | None = generation.text
        calls: list[ToolCall] = []
        if self.parse_tools:
            content, calls = split_tool_calls(generation.text)
        message: JSONObject = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": "tool_calls" if calls else generation.finish_reason,
        }
        body = self._head("chat.completion")
        body.update(choices=[choice], usage=self.usage(generation.completion_tokens))
        return body

    def chunk(self, delta: JSONObject, finish_reason: str | None = None, **extra: Any) -> bytes:
        body = self._head("chat.completion.chunk")
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        body.update(choices=[choice], **extra)
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def usage_chunk(self, completion_tokens: int) -> bytes:
        body = self._head("chat.completion.chunk")
        body.update(choices=[], usage=self.usage(completion_tokens))
        return b"data: " + orjson.dumps(body) + b"\n\n"


async def _stream(
    generator: ThreadPoolExecutor,
    student: StudentModel,
    prompt: list[int],
    params: SamplingParams,
    answer: _Answer,
    chat: ChatRequest,
    stop: threading.Event,
) -> AsyncGenerator[bytes, None]:
    """The SSE body: a role chunk, content chunks as the model writes, tool-call chunks, the
    finish chunk, the usage chunk when asked for, ``[DONE]``."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()

    def on_text(piece: str) -> None:  # in the generation thread
        loop.call_soon_threadsafe(pieces.put_nowait, piece)

    extra: dict[str, Any] = {"usage": None} if chat.include_usage else {}
    gate = ToolCallGate() if answer.parse_tools else None
    job = functools.partial(
        student.generate, prompt, params, on_text=on_text, should_stop=stop.is_set
    )
    future = generator.submit(job)
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))
    try:
        yield answer.chunk({"role": "assistant", "content": ""}, **extra)
        while (piece := await pieces.get()) is not None:
            text = gate.feed(piece) if gate is not None else piece
            if text:
                yield answer.chunk({"content": text}, **extra)
        try:
            generation = future.result()
        except Exception:  # the model failed mid-answer: say so in the stream, as OpenAI does
            logger.exception("generation failed")
            yield b"data: " + GenerationFailed("The student failed while generating.").to_json()
            yield b"\n\n"
            return
        rest, calls = gate.finish() if gate is not None else ("", [])
        if rest:
            yield answer.chunk({"content": rest}, **extra)
        for index, call in enumerate(calls):
            yield answer.chunk({"tool_calls": [{"index": index, **call}]}, **extra)
        reason = "tool_calls" if calls else generation.finish_reason
        yield answer.chunk({}, reason, **extra)
        if chat.include_usage:
            yield answer.usage_chunk(generation.completion_tokens)
        yield b"data: [DONE]\n\n"
    finally:
        stop.set()
        future.cancel()  # still queued behind another generation: never start it


class _EventStream(StreamingResponse):
    """An SSE response that always closes its event generator and calls ``on_close``.

    Starlette stops sending when the client disconnects, but leaves the generator to the
    garbage collector; here the generation's stop flag is set as soon as the response ends.
    """

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        *,
        on_close: Callable[[], None],
        headers: Mapping[str, str],
    ) -> None:
        headers = {**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, headers=headers, media_type="text/event-stream")
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            await self._events.aclose()
