"""Workers are untrusted: what a bad one sends is dropped, or its connection is closed,
with a logged reason, and the gateway goes on serving everyone else.

The bad worker here is a bare WebSocket client that speaks the protocol by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from infermesh.protocol.wire import MAX_FRAME_BYTES
from tests.fakes.engine import ScriptedEngine
from tests.mesh.helpers import (
    WorkerProcess,
    capture_logs,
    connected,
    create_worker_token,
    model_available,
    openai_worker,
    run_worker,
)
from tests.support.gateway import RunningGateway

JSON = dict[str, Any]


@pytest.fixture(scope="module")
def scripted_worker(
    mesh_gateway: RunningGateway, engine: ScriptedEngine, worker_dir: Path
) -> Iterator[WorkerProcess]:
    """A well-behaved worker that must keep serving whatever the bad ones do."""
    with run_worker(
        mesh_gateway, *openai_worker(engine, "scripted"), data_dir=worker_dir
    ) as worker:
        yield worker


async def still_serving(gateway: RunningGateway, worker: WorkerProcess) -> None:
    client = gateway.client()
    response = await asyncio.to_thread(
        client.chat.completions.create,
        model="scripted",
        messages=[{"role": "user", "content": "still there"}],
    )
    assert response.choices[0].message.content == "echo: still there"
    assert response.metadata == {"node_id": worker.node_id}


def ask_raw(gateway: RunningGateway) -> asyncio.Task[Any]:
    client = gateway.client()
    return asyncio.create_task(
        asyncio.to_thread(
            client.chat.completions.create,
            model="raw",
            messages=[{"role": "user", "content": "hi raw"}],
        )
    )


def done_frame(job_id: str, *, prompt: int, completion: int, total: int) -> JSON:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
    return {"type": "done", "job_id": job_id, "finish_reason": "stop", "usage": usage}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{not json", "malformed frame"),
        ({"type": "party"}, "malformed frame"),
        ({"type": "chunk", "job_id": "j", "chunk": {"content": 1}}, "malformed frame: chunk"),
        (done_frame("j", prompt=-1, completion=2, total=1), "malformed frame: done.usage"),
        (b"\x00\x01", "binary frame"),
    ],
    ids=["not-json", "unknown-type", "bad-field", "negative-usage", "binary"],
)
async def test_a_malformed_frame_closes_the_connection(
    frame: JSON | str | bytes,
    reason: str,
    mesh_gateway: RunningGateway,
    scripted_worker: WorkerProcess,
) -> None:
    with capture_logs("infermesh.gateway") as logs:
        async with connected(mesh_gateway, "malformed") as worker:
            await worker.send(frame)
            code, close_reason = await worker.closed()
        assert code == 1008
        assert close_reason is not None and reason in close_reason
        logs.wait_for(f"disconnected: {reason}")
    await still_serving(mesh_gateway, scripted_worker)


async def test_an_oversized_frame_closes_the_connection(
    mesh_gateway: RunningGateway, scripted_worker: WorkerProcess
) -> None:
    with capture_logs("infermesh.gateway") as logs:
        async with connected(mesh_gateway, "oversized") as worker:
            # Frames are not compressed: the gateway refuses the frame from its header
            # and closes while the rest is still being written, so the write may fail.
            with suppress(ConnectionClosed, ConnectionResetError):
                await worker.send("x" * (MAX_FRAME_BYTES + 1))
            code, _ = await worker.closed()
        assert code in (1009, 1006)  # message too big, if the close frame got through
        logs.wait_for("disconnected: connection closed (1009")
    assert not model_available(mesh_gateway, "raw")
    await still_serving(mesh_gateway, scripted_worker)


async def test_frames_for_jobs_never_sent_are_dropped(
    mesh_gateway: RunningGateway, scripted_worker: WorkerProcess
) -> None:
    with capture_logs("infermesh.mesh") as logs:
        async with connected(mesh_gateway, "stray-frames") as worker:
            await worker.send({"type": "chunk", "job_id": "nobody", "chunk": {"content": "x"}})
            await worker.send(done_frame("nobody", prompt=1, completion=1, total=2))
            await worker.send({"type": "error", "job_id": "nobody", "code": "x", "message": "x"})
            logs.wait_for("sent an error for a job it is not running")
            assert len([line for line in logs.messages if "frame dropped" in line]) == 3

            # The connection is still up and serves a job properly.
            answer = ask_raw(mesh_gateway)
            job = await worker.next_job()
            await worker.send({"type": "chunk", "job_id": job["id"], "chunk": {"content": "hey"}})
            await worker.send(done_frame(job["id"], prompt=2, completion=1, total=3))
            await worker.send({"type": "chunk", "job_id": job["id"], "chunk": {"content": "!"}})
            response = await answer
            assert response.choices[0].message.content == "hey"
            assert response.metadata == {"node_id": worker.welcome["node_id"]}
            logs.wait_for("sent a chunk for a job it is not running")
            assert not any("nobody" in line for line in logs.messages)  # ids are not logged
    await still_serving(mesh_gateway, scripted_worker)


async def test_usage_that_does_not_add_up_closes_the_connection_and_the_job_fails_over(
    mesh_gateway: RunningGateway, engine: ScriptedEngine, worker_dir: Path
) -> None:
    token = await create_worker_token(mesh_gateway.settings, "good")
    good_worker = run_worker(
        mesh_gateway, *openai_worker(engine, "raw"), token=token, data_dir=worker_dir
    )
    with capture_logs("infermesh.gateway") as logs:
        async with connected(mesh_gateway, "bad-usage") as worker:
            answer = ask_raw(mesh_gateway)
            job = await worker.next_job()
            # A good worker for the same model joins while the bad one holds the job.
            good = await asyncio.to_thread(good_worker.__enter__)
            try:
                await worker.send(done_frame(job["id"], prompt=2, completion=3, total=99))
                code, reason = await worker.closed()
                response = await answer
            finally:
                await asyncio.to_thread(good_worker.__exit__, None, None, None)
        assert code == 1008
        assert reason is not None and "usage does not add up" in reason
        logs.wait_for("protocol violation: usage does not add up")
    assert response.choices[0].message.content == "echo: hi raw"
    assert response.metadata == {"node_id": good.node_id}
