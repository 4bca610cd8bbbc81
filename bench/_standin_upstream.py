"""Stand-in for `stillroom mock`: a tiny fake OpenAI upstream used only to check the harness itself.

Same command-line contract as `stillroom mock` (``--host``, ``--port``, ``--chunks``), same wire
behaviour the benchmark relies on: ``POST /v1/chat/completions`` answers a ~1 KB JSON completion,
or, when the body says ``"stream": true``, an SSE stream of N content chunks (header
``x-mock-chunks`` or ``--chunks``) ending in ``data: [DONE]``. No latency is added.

The benchmark uses it only when `stillroom mock` is not available (or with ``bench/run --standin``).
"""

from __future__ import annotations

import argparse
import time

import orjson
import uvicorn

_CONTENT = "Stillroom stand-in completion text. " * 22  # ~800 B of content -> ~1 KB body


def _completion(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-standin",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _CONTENT},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 512, "completion_tokens": 200, "total_tokens": 712},
        }
    )


def _chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-standin",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def make_app(default_chunks: int):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        request = orjson.loads(body) if body else {}
        model = request.get("model", "standin")
        if not request.get("stream"):
            payload = _completion(model)
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        chunks = default_chunks
        for name, value in scope["headers"]:
            if name == b"x-mock-chunks":
                chunks = int(value)
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        more = {"type": "http.response.body", "more_body": True}
        await send({**more, "body": _chunk(model, {"role": "assistant", "content": ""})})
        for i in range(chunks):
            await send({**more, "body": _chunk(model, {"content": f"tok{i} "})})
        await send({**more, "body": _chunk(model, {}, "stop")})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--chunks", type=int, default=50)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.chunks),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
