"""The worker's outbox on a real WebSocket: frames go out in order, those queued together
go as one ``batch`` frame where the connection allows it, and a lost connection is
reported to whoever sends next."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from infermesh.protocol.chat import Usage
from infermesh.protocol.generation import GenerationChunk
from infermesh.protocol.wire import MAX_BATCH_FRAMES, encode_chunk, encode_done, worker_frames
from infermesh.worker.agent.outbox import Outbox
from tests.support.servers import free_port

JSON = dict[str, Any]


@dataclass
class Peer:
    """The far end: every message it received, and a way to hang up."""

    messages: list[JSON] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    hang_up: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, websocket: ServerConnection) -> None:
        closing = asyncio.ensure_future(self._close_on_hang_up(websocket))
        try:
            async for message in websocket:
                assert isinstance(message, str)  # text frames, as the gateway requires
                self.messages.append(json.loads(message))
                self.arrived.set()
        finally:
            closing.cancel()

    async def _close_on_hang_up(self, websocket: ServerConnection) -> None:
        await self.hang_up.wait()
        await websocket.close(1001, "bye")

    async def until(self, count: int) -> list[JSON]:
        async with asyncio.timeout(10):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


@asynccontextmanager
async def outbox_to_peer(*, batches: bool) -> AsyncIterator[tuple[Outbox, Peer]]:
    peer = Peer()
    port = free_port()
    async with (
        serve(peer.handle, "127.0.0.1", port),
        connect(f"ws://127.0.0.1:{port}", compression=None) as websocket,
    ):
        outbox = Outbox(websocket, batches=batches)
        writer = asyncio.ensure_future(outbox.run())
        try:
            yield outbox, peer
        finally:
            writer.cancel()


def chunk(job_id: str, text: str) -> bytes:
    return encode_chunk(job_id, GenerationChunk(content=text))


async def send_together(outbox: Outbox, frames: list[bytes], *, job: bool = True) -> None:
    """Send ``frames`` from as many tasks, all runnable in the same turn of the loop (as
    jobs whose engine output came in at once)."""
    await asyncio.gather(*(outbox.send(frame, job=job) for frame in frames))


async def test_frames_queued_together_go_as_one_batch_in_order() -> None:
    usage = Usage(prompt_tokens=1, completion_tokens=5, total_tokens=6)
    frames = [chunk(f"job-{index % 2}", f"piece {index}") for index in range(5)]
    async with outbox_to_peer(batches=True) as (outbox, peer):
        await send_together(outbox, [*frames, encode_done("job-0", "stop", usage)])
        (batch,) = await peer.until(1)
    assert batch["type"] == "batch"
    assert [frame["type"] for frame in batch["frames"]] == ["chunk"] * 5 + ["done"]
    assert [frame["chunk"]["content"] for frame in batch["frames"][:5]] == [
        f"piece {index}" for index in range(5)
    ]
    worker_frames.validate_python(batch)  # what the gateway accepts


async def test_a_task_that_sends_in_a_row_gets_each_frame_out_at_once() -> None:
    async with outbox_to_peer(batches=True) as (outbox, peer):
        for index in range(3):  # a burst from one job is not held back to be batched
            await outbox.send(chunk("job", f"piece {index}"))
        messages = await peer.until(3)
    assert messages[0] == {"type": "chunk", "job_id": "job", "chunk": {"content": "piece 0"}}
    assert [message["chunk"]["content"] for message in messages] == [
        f"piece {index}" for index in range(3)
    ]


async def test_no_batches_where_the_connection_does_not_speak_them() -> None:
    async with outbox_to_peer(batches=False) as (outbox, peer):
        await send_together(outbox, [chunk("job", str(index)) for index in range(4)])
        messages = await peer.until(4)
    assert [message["type"] for message in messages] == ["chunk"] * 4


async def test_other_frames_are_never_batched_and_keep_their_place() -> None:
    heartbeat = orjson.dumps({"type": "heartbeat", "in_flight": 1})
    async with outbox_to_peer(batches=True) as (outbox, peer):
        await asyncio.gather(
            outbox.send(chunk("job", "a")),
            outbox.send(chunk("job", "b")),
            outbox.send(heartbeat, job=False),
            outbox.send(chunk("job", "c")),
        )
        messages = await peer.until(3)
    assert [message["type"] for message in messages] == ["batch", "heartbeat", "chunk"]


async def test_a_batch_holds_at_most_the_frames_the_gateway_takes() -> None:
    count = MAX_BATCH_FRAMES + 10
    async with outbox_to_peer(batches=True) as (outbox, peer):
        await send_together(outbox, [chunk("job", str(index)) for index in range(count)])
        messages = await peer.until(2)
        await outbox.flush()
    assert [len(message["frames"]) for message in messages] == [MAX_BATCH_FRAMES, 10]


async def test_a_lost_connection_fails_the_next_send() -> None:
    async with outbox_to_peer(batches=True) as (outbox, peer):
        await outbox.send(chunk("job", "before"))
        await peer.until(1)
        peer.hang_up.set()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:  # the writer notices at its next write
                    await outbox.send(chunk("job", "after"))
                    await asyncio.sleep(0.01)
        with pytest.raises(ConnectionClosed):
            await outbox.flush()
