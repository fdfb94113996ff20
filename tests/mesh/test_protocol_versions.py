"""Worker protocol versions on the gateway: a version 1 worker is served as before, a
version 2 one may send ``batch`` frames, checked frame by frame as strictly as alone.

The workers here are bare WebSockets speaking the protocol by hand.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest

from infermesh.protocol.wire import MAX_BATCH_FRAMES, PROTOCOL_VERSION
from tests.mesh.helpers import (
    RawWorker,
    capture_logs,
    connected,
    create_worker_token,
    raw_worker,
)
from tests.support.gateway import RunningGateway

JSON = dict[str, Any]


def hello(version: int) -> JSON:
    return {
        "type": "hello",
        "protocol_version": version,
        "worker_version": "raw",
        "models": [{"id": "raw", "concurrency": 2}],
    }


@asynccontextmanager
async def welcomed(gateway: RunningGateway, name: str, version: int) -> AsyncIterator[RawWorker]:
    """A raw worker whose hello says ``version``, beating its heart, for the block."""
    token = await create_worker_token(gateway.settings, name)
    async with raw_worker(gateway, token.token) as websocket:
        worker = RawWorker(websocket)
        await websocket.send(json.dumps(hello(version)))
        worker.welcome = json.loads(await websocket.recv())
        beating = asyncio.create_task(worker.heartbeat())
        try:
            yield worker
        finally:
            beating.cancel()


def ask_raw(gateway: RunningGateway, text: str = "hi raw") -> asyncio.Task[Any]:
    client = gateway.client()
    return asyncio.create_task(
        asyncio.to_thread(
            client.chat.completions.create,
            model="raw",
            messages=[{"role": "user", "content": text}],
        )
    )


def chunk(job_id: str, content: str) -> JSON:
    return {"type": "chunk", "job_id": job_id, "chunk": {"content": content}}


def done(job_id: str) -> JSON:
    usage = {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    return {"type": "done", "job_id": job_id, "finish_reason": "stop", "usage": usage}


async def test_a_version_1_worker_gets_the_welcome_it_knows_and_serves(
    mesh_gateway: RunningGateway,
) -> None:
    async with welcomed(mesh_gateway, "v1", version=1) as worker:
        assert worker.welcome["type"] == "welcome"
        assert "protocol_version" not in worker.welcome  # a v1 worker refuses unknown fields
        answer = ask_raw(mesh_gateway)
        job = await worker.next_job()
        await worker.send(chunk(job["id"], "one "))
        await worker.send(chunk(job["id"], "by one"))
        await worker.send(done(job["id"]))
        response = await answer
    assert response.choices[0].message.content == "one by one"


@pytest.mark.parametrize("offered", [PROTOCOL_VERSION, PROTOCOL_VERSION + 5])
async def test_the_welcome_names_the_version_both_sides_speak(
    offered: int, mesh_gateway: RunningGateway
) -> None:
    async with welcomed(mesh_gateway, f"v{offered}", version=offered) as worker:
        assert worker.welcome["type"] == "welcome"
        assert worker.welcome["protocol_version"] == PROTOCOL_VERSION


async def test_a_batch_carries_the_frames_of_several_jobs_in_order(
    mesh_gateway: RunningGateway,
) -> None:
    async with connected(mesh_gateway, "batcher", concurrency=2) as worker:
        first, second = ask_raw(mesh_gateway, "first"), ask_raw(mesh_gateway, "second")
        jobs = [await worker.next_job(), await worker.next_job()]
        a, b = (job["id"] for job in jobs)
        frames = [chunk(a, "a1 "), chunk(b, "b1 "), chunk(a, "a2"), chunk(b, "b2"), done(a)]
        await worker.send({"type": "batch", "frames": frames})
        await worker.send({"type": "batch", "frames": [done(b)]})
        answers = {job["request"]["messages"][0]["content"]: job["id"] for job in jobs}
        texts = {
            answers["first"]: (await first).choices[0].message.content,
            answers["second"]: (await second).choices[0].message.content,
        }
    assert texts == {a: "a1 a2", b: "b1 b2"}


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([{"type": "chunk", "job_id": "j", "chunk": {"content": 1}}], "batch.frames.0.chunk"),
        ([{"type": "heartbeat"}], "batch.frames.0"),
        ([{"type": "batch", "frames": []}], "batch.frames.0"),
        ([], "batch.frames"),
        ([chunk("j", "x")] * (MAX_BATCH_FRAMES + 1), "batch.frames"),
        ([{**chunk("j", "x"), "job_id": "j" * 201}], "batch.frames.0.chunk.job_id"),
    ],
    ids=["bad-field", "not-a-job-frame", "nested-batch", "empty", "too-many", "long-job-id"],
)
async def test_a_malformed_batch_closes_the_connection(
    frames: list[JSON], reason: str, mesh_gateway: RunningGateway
) -> None:
    with capture_logs("infermesh.gateway") as logs:
        async with connected(mesh_gateway, "bad-batch") as worker:
            await worker.send({"type": "batch", "frames": frames})
            code, close_reason = await worker.closed()
        assert code == 1008
        assert close_reason is not None and f"malformed frame: {reason}" in close_reason
        logs.wait_for("disconnected: malformed frame")


async def test_usage_that_does_not_add_up_in_a_batch_closes_the_connection(
    mesh_gateway: RunningGateway,
) -> None:
    async with connected(mesh_gateway, "bad-batch-usage") as worker:
        answer = ask_raw(mesh_gateway)
        job = await worker.next_job()
        bad = {**done(job["id"]), "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        bad["usage"]["total_tokens"] = 99
        await worker.send({"type": "batch", "frames": [chunk(job["id"], "x"), bad]})
        code, reason = await worker.closed()
        with pytest.raises(openai.APIStatusError) as caught:  # no other worker to fail over to
            await answer
    assert code == 1008 and reason is not None and "usage does not add up" in reason
    assert caught.value.status_code in (502, 503)
