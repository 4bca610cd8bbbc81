"""Run an ASGI app under uvicorn, under our control.

Recent uvicorn re-raises a caught SIGTERM/SIGINT after its graceful shutdown, so a plain
``uvicorn.run`` ends "killed by signal". ``StillroomServer`` keeps uvicorn's graceful sequence
(stop accepting, let in-flight requests finish within the drain window, cancel the rest, run the
lifespan shutdown) and then returns normally, so the process exits 0. The first signal also
tells the app to report not-ready; a second SIGINT forces the exit, as in uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Generator
from types import FrameType
from typing import Any

import uvicorn

logger = logging.getLogger("stillroom.server")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _DropIncompleteResponseNotice(logging.Filter):
    """The relay aborts a client stream on purpose when the upstream breaks mid-body (and logs
    that itself); uvicorn's generic error line for it would read like a proxy bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


class _StripQueryStrings(logging.Filter):
    """Access-log lines without query strings: URLs can carry keys (``?key=...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], args[3], args[4])
        return True


class StillroomServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_stop = on_stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            logger.info("received %s: draining", signal.Signals(sig).name)
            if self._on_stop is not None:
                self._on_stop()
        elif sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.error").addFilter(_DropIncompleteResponseNotice())
    logging.getLogger("uvicorn.access").addFilter(_StripQueryStrings())
    # httpx logs every request URL at INFO; URLs can carry keys (?key=...) and it costs CPU.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def uvicorn_config(app: Any, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    loop = "uvloop" if _has_module("uvloop") else "asyncio"
    http = "httptools" if _has_module("httptools") else "h11"
    base: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": loop,
        "http": http,
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "server_header": False,  # the client gets the upstream's Server and Date headers
        "date_header": False,
        "timeout_keep_alive": 75,  # longer than common client pools keep idle sockets
        "ws": "none",
        "proxy_headers": False,  # never trust X-Forwarded-* (routing is operator config only)
    }
    base.update(options)
    return uvicorn.Config(app, **base)


def run(config: uvicorn.Config, on_stop: Callable[[], None] | None = None) -> bool:
    """Serve until stopped; True when it started and stopped cleanly.

    A socket that cannot be bound never gets here: uvicorn logs it and exits with its own
    STARTUP_FAILURE (3), the same code as ours.
    """
    server = StillroomServer(config, on_stop=on_stop)
    if config.loop == "asyncio":
        asyncio.run(server.serve())
    else:
        _run_uvloop(server)
    return server.started


def _run_uvloop(server: uvicorn.Server) -> None:
    import uvloop

    uvloop.run(server.serve())


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
