"""Minimal pass-through: the cheapest honest Python relay, as a baseline for `stillroom serve`.

Raw ASGI on uvicorn (httptools + uvloop), one keep-alive aiohttp session to the upstream, request
body read whole and forwarded, response streamed back chunk by chunk as it arrives. No capture, no
validation, no logging: what is left is the floor a Python proxy pays on this machine.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host", b"trailer"}


def make_app(upstream: str):
    state: dict[str, aiohttp.ClientSession] = {}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
                    state["s"] = aiohttp.ClientSession(upstream, connector=connector)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await state["s"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in HOP]
        path = scope["raw_path"].decode()
        if scope["query_string"]:
            path += "?" + scope["query_string"].decode()
        async with state["s"].request(
            scope["method"], path, data=body, headers=headers, auto_decompress=False
        ) as resp:
            out = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in HOP]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8001")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.upstream),
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
