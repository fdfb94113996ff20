"""Stopping the work of a non-streamed request whose client went away.

Starlette cancels a streamed response when its client disconnects, but runs a plain
handler to its end. A chat completion can run for minutes, holding a worker, a
concurrency slot and a credit hold; :func:`unless_client_leaves` stops it instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from infermesh.errors import ClientDisconnected

T = TypeVar("T")
logger = logging.getLogger(__name__)


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """The result of ``work`` (its exception as it is), or, if the client disconnects
    first, :class:`ClientDisconnected` once ``work`` has been cancelled and has cleaned
    up. The request body must have been read already.

    ``work`` runs in the caller's task; a watcher task cancels that task when the client
    leaves (one task per request, not two)."""
    task = asyncio.current_task()
    assert task is not None
    left = asyncio.Event()
    watcher = asyncio.ensure_future(_cancel_when_gone(request, task, left))
    try:
        return await work
    except asyncio.CancelledError:
        if not left.is_set():
            raise
        task.uncancel()
        raise ClientDisconnected("The client closed the connection before the answer.") from None
    finally:
        watcher.cancel()


async def _cancel_when_gone(request: Request, task: asyncio.Task[Any], left: asyncio.Event) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    logger.info("the client left before its answer; stopping the request")
    left.set()
    task.cancel()
