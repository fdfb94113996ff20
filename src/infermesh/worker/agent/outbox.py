"""The frames a worker sends its gateway, written in order by one task.

Jobs, the heartbeat and the drain hand their encoded frames to :meth:`Outbox.send`;
the writer (:meth:`Outbox.run`) sends them. A frame sent when none is waiting is written
before its sender goes on (a job's first chunk is never held back). Job frames that
other tasks queue meanwhile (many jobs whose engine output came in together), or that
queue while a write waits on the network, go as one ``batch`` frame when the connection
speaks protocol version 2: one WebSocket message for the gateway to receive and parse
instead of one a token. Sending waits while more than :data:`MAX_PENDING_BYTES` are
queued, so a slow gateway slows the jobs down rather than growing the worker's memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import NoReturn

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from infermesh.protocol.wire import MAX_BATCH_FRAMES, MAX_FRAME_BYTES, encode_batch

MAX_PENDING_BYTES = 1024 * 1024
_BATCH_ROOM = MAX_FRAME_BYTES - 1024  # room for the batch frame's own text


class Outbox:
    """Queues frames for one connection and writes them in order; see the module doc."""

    def __init__(self, websocket: ClientConnection, *, batches: bool) -> None:
        self._websocket = websocket
        self._batches = batches
        self._pending: deque[tuple[bytes, bool]] = deque()
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._written = asyncio.Event()
        self._written.set()
        self._failure: ConnectionClosed | None = None

    async def send(self, frame: bytes, *, job: bool = True) -> None:
        """Queue ``frame`` (a job's frame if ``job``, else one never batched).

        Raises :class:`ConnectionClosed` once the connection has failed.
        """
        self._raise_if_failed()
        first = not self._pending
        self._pending.append((frame, job))
        self._pending_bytes += len(frame)
        self._written.clear()
        self._wakeup.set()
        if first:
            # Let the writer take it before this task goes on: a job whose engine output
            # came in a burst must not hold its first chunk back until the burst is read.
            # (Tasks already runnable still queue theirs first: those go in one batch.)
            await asyncio.sleep(0)
        while self._pending_bytes > MAX_PENDING_BYTES and self._failure is None:
            self._room.clear()
            await self._room.wait()
        self._raise_if_failed()

    async def flush(self) -> None:
        """Wait until every frame queued so far is written (or the connection failed)."""
        await self._written.wait()
        self._raise_if_failed()

    async def run(self) -> NoReturn:
        """Write queued frames until the connection fails (it raises ConnectionClosed)."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._pending:
                    message, size = self._next_message()
                    await self._websocket.send(message, text=True)
                    self._pending_bytes -= size
                    if self._pending_bytes <= MAX_PENDING_BYTES:
                        self._room.set()
                self._written.set()
        except ConnectionClosed as exc:
            self._failure = exc
            self._room.set()
            self._written.set()
            raise

    def _next_message(self) -> tuple[bytes, int]:
        """The next message to write (a lone frame or a batch) and the frames' size."""
        frame, job = self._pending.popleft()
        if not (job and self._batches and self._pending and self._pending[0][1]):
            return frame, len(frame)
        frames, size = [frame], len(frame)
        while self._pending and len(frames) < MAX_BATCH_FRAMES:
            following, job = self._pending[0]
            if not job or size + len(following) + 1 > _BATCH_ROOM:
                break
            self._pending.popleft()
            frames.append(following)
            size += len(following)
        return encode_batch(frames), size

    def _raise_if_failed(self) -> None:
        failure = self._failure
        if failure is not None:
            raise type(failure)(failure.rcvd, failure.sent, failure.rcvd_then_sent) from failure
