"""The one way to start a background task: ``spawn`` keeps a strong reference and logs crashes.

Bare ``asyncio.create_task`` is banned by ruff (TID251): a task nobody references can be garbage
collected mid-flight, and its exception vanishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger("stillroom.tasks")

T = TypeVar("T")

_running: set[asyncio.Task[Any]] = set()


def _forget(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("background task %s crashed", task.get_name(), exc_info=exc)


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start ``coro`` as a task that is referenced until it ends; crashes are logged."""
    task = asyncio.create_task(coro, name=name)  # noqa: TID251 - the one allowed place
    _running.add(task)
    task.add_done_callback(_forget)
    return task


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended; its cancellation is not raised."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
