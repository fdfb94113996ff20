"""The worker agent on the wire: which protocol version it speaks with which gateway,
and that it batches only where the gateway knows batches. (What it adds to a request's
latency is measured by ``bench/serving.py``, not asserted here.) The agent and the
engine are real; the gateway is written by hand (:mod:`tests.worker.raw_gateway`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermesh.protocol.wire import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.worker.raw_gateway import raw_gateway, running_agent


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"]) as running:
        yield running


async def run_jobs(gateway: Any, count: int, *, prefix: str = "job") -> list[str]:
    """Send ``count`` jobs at once; return their texts once all are done."""
    ids = [f"{prefix}-{index}" for index in range(count)]
    for job_id in ids:
        await gateway.send_job(job_id, f"text of {job_id}")
    for job_id in ids:
        await gateway.frame("done", job_id)
    return [
        "".join(
            received.frame["chunk"].get("content") or ""
            for received in gateway.received
            if received.frame["type"] == "chunk" and received.frame["job_id"] == job_id
        )
        for job_id in ids
    ]


async def test_the_agent_speaks_the_newest_version_and_may_batch(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    async with raw_gateway(version=PROTOCOL_VERSION) as gateway:
        async with running_agent(gateway, engine, tmp_path, concurrency=16):
            texts = await run_jobs(gateway, 16)
        assert gateway.hellos[0]["protocol_version"] == PROTOCOL_VERSION
        assert gateway.extensions == [None]  # no permessage-deflate offered
    assert texts == [f"echo: text of job-{index}" for index in range(16)]
    assert gateway.messages <= len(gateway.received)


async def test_a_version_1_gateway_never_gets_a_batch(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    async with (
        raw_gateway(version=None) as gateway,
        running_agent(gateway, engine, tmp_path, concurrency=16),
    ):
        texts = await run_jobs(gateway, 16)
    assert texts == [f"echo: text of job-{index}" for index in range(16)]
    assert not any(received.batched for received in gateway.received)
    assert gateway.messages == len(gateway.received)


async def test_an_older_gateway_is_dialed_again_with_the_oldest_version(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    async with (
        raw_gateway(version=None, speaks=(MIN_PROTOCOL_VERSION,)) as gateway,
        running_agent(gateway, engine, tmp_path) as agent,
    ):
        texts = await run_jobs(gateway, 2)
        assert agent.counts.served == 2
    versions = [hello["protocol_version"] for hello in gateway.hellos]
    assert versions == [PROTOCOL_VERSION, MIN_PROTOCOL_VERSION]
    assert texts == ["echo: text of job-0", "echo: text of job-1"]


def chunk_frames(gateway: Any, job_id: str) -> list[str]:
    return [
        received.frame["chunk"].get("content") or ""
        for received in gateway.received
        if received.frame["type"] == "chunk" and received.frame["job_id"] == job_id
    ]


async def test_a_job_not_streamed_to_its_client_comes_back_in_few_frames(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    """The gateway pays for every frame; a client that waits for the whole answer needs
    its first piece (the first token is timed) and then the rest, not one per token."""
    words = " ".join(f"w{index}" for index in range(40))
    async with (
        raw_gateway(version=PROTOCOL_VERSION) as gateway,
        running_agent(gateway, engine, tmp_path),
    ):
        await gateway.send_job("whole", words, stream=False)
        await gateway.frame("done", "whole")
        await gateway.send_job("streamed", words, stream=True)
        await gateway.frame("done", "streamed")
    whole, streamed = chunk_frames(gateway, "whole"), chunk_frames(gateway, "streamed")
    assert "".join(whole) == "".join(streamed) == f"echo: {words}"
    assert len(whole) == 2  # the first piece, then the rest at the end
    assert len(streamed) > 40  # a token a frame
