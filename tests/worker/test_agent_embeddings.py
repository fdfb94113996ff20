"""Embedding jobs through the worker agent: the hello says each model's kind, vectors come
back in bounded frames then ``done``, jobs of the wrong kind are refused, and a gateway
of an older protocol is not offered embedding models. The agent, the tiny embedding model
and the engines are real; the gateway is written by hand (:mod:`tests.worker.raw_gateway`).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from infermesh.errors import BackendError
from infermesh.protocol.embeddings import EmbeddingVector
from infermesh.protocol.wire import (
    MAX_FRAME_BYTES,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    encode_chunk,
    worker_frames,
)
from infermesh.worker.agent import AgentConfig, WorkerAgent, serve_spec
from infermesh.worker.agent.outbox import Outbox
from infermesh.worker.agent.vector_frames import (
    JOIN_SECONDS,
    VECTOR_FRAME_BYTES,
    VectorFrames,
)
from infermesh.worker.host import HostOptions, ModelHost
from infermesh.worker.tiny_embed import ensure_tiny_embed_model
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.support.servers import free_port
from tests.worker.embedding_upstream import EmbeddingUpstream, run_embedding_upstream
from tests.worker.raw_gateway import RawGateway, agent_of, raw_gateway

JSON = dict[str, Any]


# --- packing vectors into frames -------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def vectors(indices: range, chars: int = 344) -> list[EmbeddingVector]:
    return [EmbeddingVector(index=index, embedding="A" * chars) for index in indices]


def test_the_first_vectors_go_at_once_then_they_are_gathered() -> None:
    clock = Clock()
    frames = VectorFrames(30, clock)
    assert [len(c.embeddings or ()) for c in frames.add(vectors(range(0, 8)))] == [8]
    assert frames.add(vectors(range(8, 16))) == []
    clock.now = JOIN_SECONDS
    assert [len(c.embeddings or ()) for c in frames.add(vectors(range(16, 24)))] == [16]
    assert frames.add(vectors(range(24, 28))) == []
    assert frames.add(vectors(range(28, 30))) == []
    assert [len(c.embeddings or ()) for c in frames.finish()] == [6]


def test_a_frame_never_holds_more_than_its_bytes_nor_nothing() -> None:
    frames = VectorFrames(300, Clock())
    chars = 21848  # 4096 dimensions
    chunks = frames.add(vectors(range(0, 1))) + frames.add(vectors(range(1, 300), chars))
    chunks += frames.finish()
    sizes = [len(encode_chunk("job-1", chunk)) for chunk in chunks]
    assert max(sizes) <= VECTOR_FRAME_BYTES + 200
    assert all(chunk.embeddings for chunk in chunks)
    assert sum(len(chunk.embeddings or ()) for chunk in chunks) == 300
    assert len(chunks) == 1 + -(-299 * (chars + 32) // VECTOR_FRAME_BYTES)


@pytest.mark.parametrize("index", [1, 4, -1], ids=["twice", "beyond", "negative"])
def test_a_vector_for_no_input_or_twice_fails_the_job(index: int) -> None:
    frames = VectorFrames(4, Clock())
    frames.add(vectors(range(0, 2)))
    vector = EmbeddingVector.model_construct(index=index, embedding="AAAA")  # unchecked
    with pytest.raises(BackendError, match="no input, or one twice"):
        frames.add([vector])


def test_an_end_without_every_vector_fails_the_job() -> None:
    frames = VectorFrames(4, Clock())
    frames.add(vectors(range(0, 3)))
    with pytest.raises(BackendError, match="without 1 of its vectors"):
        frames.finish()


async def test_a_batch_of_large_vector_frames_stays_within_the_frame_limit() -> None:
    received: list[int] = []
    arrived = asyncio.Event()

    async def peer(websocket: ServerConnection) -> None:
        async for message in websocket:
            received.append(len(message))
            worker_frames.validate_json(message)
            arrived.set()

    chunk = VectorFrames(2048, Clock()).add(vectors(range(0, 23), 21848))[0]
    frame = encode_chunk("job-1", chunk)
    count = 2 * MAX_FRAME_BYTES // len(frame) + 1
    port = free_port()
    async with (
        serve(peer, "127.0.0.1", port, max_size=None),
        connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as websocket,
    ):
        outbox = Outbox(websocket, batches=True)
        writer = asyncio.ensure_future(outbox.run())
        try:
            await asyncio.gather(*(outbox.send(frame) for _ in range(count)))
            await outbox.flush()
            async with asyncio.timeout(30):
                while sum(received) < count * len(frame):
                    arrived.clear()
                    await arrived.wait()
        finally:
            writer.cancel()
    assert len(received) >= 3
    assert max(received) <= MAX_FRAME_BYTES


# --- the agent -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("agent-embed-models")
    ensure_tiny_embed_model(directory)
    return directory


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"]) as running:
        yield running


@pytest.fixture(scope="module")
def upstream() -> Iterator[EmbeddingUpstream]:
    with run_embedding_upstream() as running:
        yield running


@asynccontextmanager
async def embedding_agent(
    gateway: RawGateway, engine: ScriptedEngine, upstream: EmbeddingUpstream, models_dir: Path
) -> AsyncIterator[WorkerAgent]:
    """An agent serving chat model ``m`` (scripted engine), embedding models ``e`` (the
    tiny one, in process) and ``big`` (4096 dimensions, from the scripted upstream)."""
    specs = [
        serve_spec("m=scripted-1", backend="openai", upstream_url=engine.base_url),
        serve_spec("e=builtin:infermesh-tiny-embed", backend="transformers", kind="embedding"),
        serve_spec(
            "big=vec-4096", backend="openai", upstream_url=upstream.base_url, kind="embedding"
        ),
    ]
    host = ModelHost(specs, HostOptions(models_dir=models_dir, device="cpu"))
    config = AgentConfig(
        url=gateway.url,
        token="t",
        models={"m": 2, "e": 2, "big": 2},
        kinds={"e": "embedding", "big": "embedding"},
    )
    async with agent_of(gateway, config, host) as agent:
        yield agent


async def send(gateway: RawGateway, job: JSON) -> None:
    websocket = await gateway.connection()
    await websocket.send(json.dumps({"type": "job", "job": job}))


def chunks_of(gateway: RawGateway, job_id: str) -> list[JSON]:
    return [
        received.frame
        for received in gateway.received
        if received.frame["type"] == "chunk" and received.frame["job_id"] == job_id
    ]


def vectors_of(gateway: RawGateway, job_id: str) -> dict[int, Any]:
    """The job's vectors by index, checking that each chunk holds only vectors and each
    index comes once."""
    found: dict[int, Any] = {}
    for frame in chunks_of(gateway, job_id):
        assert list(frame["chunk"]) == ["embeddings"] and frame["chunk"]["embeddings"]
        for vector in frame["chunk"]["embeddings"]:
            assert vector["index"] not in found
            found[vector["index"]] = np.frombuffer(base64.b64decode(vector["embedding"]), "<f4")
    return found


@pytest.fixture
async def gateway(
    engine: ScriptedEngine, upstream: EmbeddingUpstream, models_dir: Path
) -> AsyncIterator[RawGateway]:
    async with (
        raw_gateway(version=PROTOCOL_VERSION) as gateway,
        embedding_agent(gateway, engine, upstream, models_dir),
    ):
        yield gateway


async def test_the_hello_says_which_models_are_for_embeddings(gateway: RawGateway) -> None:
    assert gateway.hellos[0]["protocol_version"] == PROTOCOL_VERSION
    assert gateway.hellos[0]["models"] == [
        {"id": "m", "concurrency": 2},  # a chat model says no kind: a version-2 gateway reads it
        {"id": "e", "concurrency": 2, "kind": "embedding"},
        {"id": "big", "concurrency": 2, "kind": "embedding"},
    ]


async def test_an_embedding_job_comes_back_as_vectors_then_done(gateway: RawGateway) -> None:
    texts = [f"text number {index}" for index in range(50)]
    await send(gateway, {"id": "full", "model": "e", "kind": "embedding", "input": texts})
    await send(
        gateway,
        {"id": "short", "model": "e", "kind": "embedding", "input": texts, "dimensions": 16},
    )
    full_done = (await gateway.frame("done", "full")).frame
    short_done = (await gateway.frame("done", "short")).frame
    full, short = vectors_of(gateway, "full"), vectors_of(gateway, "short")
    assert sorted(full) == sorted(short) == list(range(50))
    assert {len(vector) for vector in full.values()} == {64}
    assert {len(vector) for vector in short.values()} == {16}
    assert np.allclose([np.linalg.norm(vector) for vector in short.values()], 1, atol=1e-5)
    assert 2 <= len(chunks_of(gateway, "full")) <= 50  # the first piece, then few frames
    tokens = full_done["usage"]["prompt_tokens"]
    assert tokens >= 150
    assert full_done == short_done | {"job_id": "full"}
    assert full_done == {
        "type": "done",
        "job_id": "full",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
    }


async def test_large_vectors_come_in_frames_of_bounded_size(gateway: RawGateway) -> None:
    texts = [f"text {index}" for index in range(100)]
    await send(gateway, {"id": "big-1", "model": "big", "kind": "embedding", "input": texts})
    await gateway.frame("done", "big-1")
    found = vectors_of(gateway, "big-1")
    assert sorted(found) == list(range(100))
    assert {len(vector) for vector in found.values()} == {4096}
    frames = chunks_of(gateway, "big-1")
    sizes = [len(orjson.dumps(frame)) for frame in frames]
    assert len(frames) >= 5
    assert max(sizes) <= VECTOR_FRAME_BYTES + 1024


async def test_jobs_of_the_wrong_kind_or_too_long_fail_with_their_code(
    gateway: RawGateway,
) -> None:
    await send(gateway, {"id": "as-chat", "model": "e", "request": chat("e")})
    await send(gateway, {"id": "as-embed", "model": "m", "kind": "embedding", "input": ["a"]})
    long = ["word " * 600]
    await send(gateway, {"id": "long", "model": "e", "kind": "embedding", "input": long})
    wide = {"id": "wide", "model": "e", "kind": "embedding", "input": ["a"], "dimensions": 65}
    await send(gateway, wide)
    errors = {
        job_id: (await gateway.frame("error", job_id)).frame
        for job_id in ("as-chat", "as-embed", "long", "wide")
    }
    assert errors["as-chat"]["code"] == errors["as-embed"]["code"] == "model_not_served"
    assert (errors["long"]["code"], errors["long"]["status"]) == ("context_length_exceeded", 400)
    assert (errors["wide"]["code"], errors["wide"]["status"]) == ("invalid_request", 400)
    assert not any(chunks_of(gateway, job_id) for job_id in errors)


def chat(model: str) -> JSON:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def test_a_gateway_of_an_older_protocol_is_offered_chat_models_only(
    engine: ScriptedEngine, upstream: EmbeddingUpstream, models_dir: Path
) -> None:
    async with (
        raw_gateway(version=None, speaks=(MIN_PROTOCOL_VERSION,)) as gateway,
        embedding_agent(gateway, engine, upstream, models_dir),
    ):
        await send(gateway, {"id": "chat-1", "model": "m", "request": chat("m")})
        await gateway.frame("done", "chat-1")
    first, second = gateway.hellos
    assert [model.get("kind") for model in first["models"]] == [None, "embedding", "embedding"]
    assert second["protocol_version"] == MIN_PROTOCOL_VERSION
    assert second["models"] == [{"id": "m", "concurrency": 2}]
