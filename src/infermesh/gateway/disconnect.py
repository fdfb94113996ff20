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
    up. The request body must have been read already."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            logger.info("the client left before its answer; stopping the request")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # let it settle its bill
    if task.cancelled():
        raise ClientDisconnected("The client closed the connection before the answer.")
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
