"""Embeddings from workers that lie: every vector a worker sends is checked (its input,
once, its length, finite numbers, all of them), its usage is bounded by the gateway's own
count, and a worker that sends more than the job allows is cut off. A job a worker broke
is tried on another worker; nothing of it is billed.

The workers here are bare WebSockets speaking protocol version 3 by hand.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from infermesh.catalog.spec import ModelSpec
from infermesh.protocol.wire import PROTOCOL_VERSION
from tests.mesh.helpers import HEARTBEAT, RawWorker, create_worker_token, raw_worker
from tests.support.gateway import RunningGateway, create_key, start_gateway
from tests.support.waiting import wait_until

JSON = dict[str, Any]
DIMS = 4
STALL_LIMIT = 3.0
"""Seconds a worker may stay silent on a job here (before its first chunk, or between)."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    embed = ModelSpec.model_validate(
        {
            "id": "raw-embed",
            "kind": "embedding",
            "dimensions": DIMS,
            "context_length": 512,
            "pricing": {"input_per_million": "1000"},  # a thousandth of a dollar a token
        }
    )
    chat = ModelSpec(id="raw-chat")
    with start_gateway(
        tmp_path_factory.mktemp("embeddings-hostile"),
        specs=[embed, chat],
        embedded_worker=False,
        tier_limits={"emb-tpm": {"tokens_per_minute": 40}},
        tier_access={"pro": ["*"], "emb-tpm": ["*"]},
        first_token_timeout=STALL_LIMIT,
        chunk_timeout=STALL_LIMIT,
        **HEARTBEAT,
    ) as running:
        yield running


def vector(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


GOOD = vector(0.5, 0.5, 0.5, 0.5)


def vectors_chunk(job: JSON, *items: tuple[int, str]) -> JSON:
    embeddings = [{"index": index, "embedding": value} for index, value in items]
    return {"type": "chunk", "job_id": job["id"], "chunk": {"embeddings": embeddings}}


def done(job: JSON, prompt: int) -> JSON:
    usage = {"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt}
    return {"type": "done", "job_id": job["id"], "finish_reason": "stop", "usage": usage}


async def hello(worker: RawWorker, models: list[JSON], version: int = PROTOCOL_VERSION) -> JSON:
    frame = {"type": "hello", "protocol_version": version, "worker_version": "raw"}
    await worker.send({**frame, "models": models})
    worker.welcome = json.loads(await worker.websocket.recv())
    return worker.welcome


@asynccontextmanager
async def embedder(gateway: RunningGateway, name: str) -> AsyncIterator[RawWorker]:
    """A raw worker welcomed for ``raw-embed`` as an embedding model."""
    token = await create_worker_token(gateway.settings, name)
    async with raw_worker(gateway, token.token) as websocket:
        worker = RawWorker(websocket)
        welcome = await hello(worker, [{"id": "raw-embed", "kind": "embedding"}])
        assert welcome["type"] == "welcome" and welcome["accepted"] == ["raw-embed"], welcome
        beating = asyncio.create_task(worker.heartbeat())
        try:
            yield worker
        finally:
            beating.cancel()


async def next_job(worker: RawWorker) -> JSON:
    """The worker's next job (a test that waits longer has failed)."""
    return await asyncio.wait_for(worker.next_job(), timeout=30)


def embed(
    gateway: RunningGateway, inputs: list[str], *, key: str | None = None, timeout: float = 30
) -> asyncio.Task[httpx.Response]:
    """The request, made from a thread; ``timeout``: when the client gives up (the task
    then fails with httpx's timeout)."""
    body = {"model": "raw-embed", "input": inputs, "encoding_format": "base64"}
    headers = {"Authorization": f"Bearer {key or gateway.key}"}

    def post() -> httpx.Response:
        with httpx.Client(timeout=timeout) as client:
            return client.post(f"{gateway.base_url}/v1/embeddings", json=body, headers=headers)

    return asyncio.create_task(asyncio.to_thread(post))


async def test_an_honest_raw_worker_is_answered_in_input_order_and_billed_its_tokens(
    gateway: RunningGateway,
) -> None:
    async with embedder(gateway, "honest") as worker:
        answer = embed(gateway, ["one", "two words"])
        job = await next_job(worker)
        assert job["kind"] == "embedding" and job["input"] == ["one", "two words"]
        second, first = vector(0, 1, 0, 0), vector(1, 0, 0, 0)
        await worker.send(vectors_chunk(job, (1, second)))
        await worker.send(vectors_chunk(job, (0, first)))
        await worker.send(done(job, prompt=3))
        response = await answer
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["embedding"] for item in body["data"]] == [first, second]
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["cost_micro_usd"] == 3000
    assert response.headers["x-infermesh-cost-micro-usd"] == "3000"


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("wrong-index", lambda job: [vectors_chunk(job, (0, GOOD), (2, GOOD))]),
        ("twice", lambda job: [vectors_chunk(job, (0, GOOD), (0, GOOD))]),
        ("short", lambda job: [vectors_chunk(job, (0, vector(1, 0, 0)), (1, GOOD))]),
        ("not-base64", lambda job: [vectors_chunk(job, (0, "!" * 24), (1, GOOD))]),
        ("nan", lambda job: [vectors_chunk(job, (0, vector(float("nan"), 0, 0, 0)), (1, GOOD))]),
        ("missing", lambda job: [vectors_chunk(job, (0, GOOD)), done(job, 2)]),
        (
            "text",
            lambda job: [{"type": "chunk", "job_id": job["id"], "chunk": {"content": "hi"}}],
        ),
    ],
)
async def test_a_worker_that_sends_bad_vectors_fails_over_and_nothing_is_billed(
    gateway: RunningGateway, name: str, frames: Any
) -> None:
    async with embedder(gateway, f"liar-{name}") as liar:
        answer = embed(gateway, ["a", "b"])
        job = await next_job(liar)
        async with embedder(gateway, f"honest-{name}") as honest:
            for frame in frames(job):
                await liar.send(frame)
            retried = await next_job(honest)  # the same inputs, on the other worker
            assert retried["input"] == ["a", "b"]
            await honest.send(vectors_chunk(retried, (0, GOOD), (1, GOOD)))
            await honest.send(done(retried, prompt=2))
            response = await answer
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 2


async def test_usage_beyond_the_gateways_count_is_cut_to_it(gateway: RunningGateway) -> None:
    async with embedder(gateway, "inflator") as worker:
        answer = embed(gateway, ["abc"])  # 3 bytes: at most 3 + 8 (model overhead) tokens
        job = await next_job(worker)
        await worker.send(vectors_chunk(job, (0, GOOD)))
        await worker.send(done(job, prompt=500))
        response = await answer
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 11


async def test_a_worker_that_floods_vectors_is_cut_off(gateway: RunningGateway) -> None:
    async with embedder(gateway, "flooder") as worker:
        answer = embed(gateway, ["a"])
        job = await next_job(worker)
        many = [(0, GOOD)] * 600  # far more characters than one vector of 4 numbers
        await worker.send(vectors_chunk(job, *many))
        cancel = await asyncio.wait_for(worker.next_frame("cancel"), timeout=30)
        assert cancel["job_id"] == job["id"]  # the gateway stopped the job at once
        response = await answer
    # no other worker serves the model: the client is told so, not kept waiting
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "no_worker_available"


async def test_a_worker_offering_a_model_for_the_wrong_kind_is_refused_it(
    gateway: RunningGateway,
) -> None:
    cases = [
        # a version 2 worker knows no kinds: what it offers is for chat
        ([{"id": "raw-embed"}, {"id": "raw-chat"}], 2, ["raw-chat"], "raw-embed"),
        ([{"id": "raw-chat", "kind": "embedding"}, {"id": "raw-embed", "kind": "embedding"}],
         PROTOCOL_VERSION, ["raw-embed"], "raw-chat"),
    ]  # fmt: skip
    for models, version, accepted, refused in cases:
        token = await create_worker_token(gateway.settings, f"kinds-v{version}")
        async with raw_worker(gateway, token.token) as websocket:
            welcome = await hello(RawWorker(websocket), models, version)
        assert welcome["accepted"] == accepted, welcome
        reasons = {item["id"]: item["reason"] for item in welcome["refused"]}
        assert "serves it for" in reasons[refused]


async def test_a_version_2_worker_gets_chat_jobs_without_a_kind(gateway: RunningGateway) -> None:
    token = await create_worker_token(gateway.settings, "v2-chat")
    async with raw_worker(gateway, token.token) as websocket:
        worker = RawWorker(websocket)
        await hello(worker, [{"id": "raw-chat"}], version=2)
        beating = asyncio.create_task(worker.heartbeat())
        client = gateway.client(max_retries=0)
        answer = asyncio.create_task(
            asyncio.to_thread(
                client.chat.completions.create,
                model="raw-chat",
                messages=[{"role": "user", "content": "hi"}],
            )
        )
        job = await next_job(worker)
        assert "kind" not in job  # a version 2 worker refuses fields it does not know
        await worker.send({"type": "chunk", "job_id": job["id"], "chunk": {"content": "hey"}})
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        await worker.send(
            {"type": "done", "job_id": job["id"], "finish_reason": "stop", "usage": usage}
        )
        completion = await answer
        beating.cancel()
    assert completion.choices[0].message.content == "hey"


def test_the_usage_record_says_embeddings(gateway: RunningGateway, tmp_path: Path) -> None:
    def records() -> list[JSON]:
        response = gateway.http().get("/v1/usage", headers=gateway.auth())
        data: list[JSON] = response.json()["data"]
        return [record for record in data if record["model"] == "raw-embed"]

    wait_until(lambda: bool(records()), timeout=10, what="an embeddings usage record")
    assert {record["endpoint"] for record in records()} == {"embeddings"}


async def test_embeddings_draw_from_the_token_rate_limit_like_chat(
    gateway: RunningGateway,
) -> None:
    key = await create_key(gateway.settings, "emb-limited", tier="emb-tpm")  # 40 tokens/min
    too_big = await embed(gateway, ["x" * 200], key=key)  # about 50 tokens: never fits
    assert too_big.status_code == 400, too_big.text
    assert too_big.json()["error"]["code"] == "request_exceeds_rate_limit"
    async with embedder(gateway, "limited") as worker:
        for _ in range(2):  # 16 + 16 tokens drawn (4 characters a token), then used
            answer = embed(gateway, ["y" * 64], key=key)
            job = await next_job(worker)
            await worker.send(vectors_chunk(job, (0, GOOD)))
            await worker.send(done(job, prompt=16))
            assert (await answer).status_code == 200
    refused = await embed(gateway, ["z" * 64], key=key)  # 16 more than the 8 left
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["param"] == "tokens_per_minute"
    assert refused.headers["retry-after"]


def credit(gateway: RunningGateway, key: str) -> JSON:
    response = httpx.get(
        f"{gateway.base_url}/v1/credits/balance",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    answer: JSON = response.json()
    return answer


def records_of(gateway: RunningGateway, key: str) -> list[JSON]:
    response = httpx.get(
        f"{gateway.base_url}/v1/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    data: list[JSON] = response.json()["data"]
    return data


async def test_a_worker_that_stalls_is_stopped_and_nothing_is_billed(
    gateway: RunningGateway,
) -> None:
    key = await create_key(gateway.settings, "stalled-on")
    before = await asyncio.to_thread(credit, gateway, key)
    async with embedder(gateway, "staller") as worker:
        answer = embed(gateway, ["never answered"], key=key)
        job = await next_job(worker)
        cancel = await asyncio.wait_for(worker.next_frame("cancel"), timeout=30)
        assert cancel["job_id"] == job["id"]  # stopped once it was silent too long
        response = await answer
    assert response.status_code in (502, 503), response.text  # failed over, none left
    assert response.json()["error"]["code"] in {"worker_timeout", "no_worker_available"}

    def settled() -> bool:
        return any(record["status"] == "failed" for record in records_of(gateway, key))

    wait_until(settled, timeout=10, what="the failed request's record")
    record = records_of(gateway, key)[0]
    assert (record["endpoint"], record["cost"]["micro_usd"]) == ("embeddings", 0)
    after = await asyncio.to_thread(credit, gateway, key)
    assert after["balance"] == before["balance"] and after["held"]["micro_usd"] == 0


async def test_a_client_that_hangs_up_frees_the_hold_and_the_workers_slot(
    gateway: RunningGateway,
) -> None:
    key = await create_key(gateway.settings, "hangs-up")
    before = await asyncio.to_thread(credit, gateway, key)
    async with embedder(gateway, "slow-one") as worker:  # one job at a time
        gone = embed(gateway, ["the client leaves"], key=key, timeout=1.0)
        job = await next_job(worker)
        with pytest.raises(httpx.TimeoutException):
            await gone  # the client gave up while the worker held the job
        cancel = await asyncio.wait_for(worker.next_frame("cancel"), timeout=30)
        assert cancel["job_id"] == job["id"]
        answer = embed(gateway, ["the next one"], key=key)  # the slot is free again
        second = await next_job(worker)
        await worker.send(vectors_chunk(second, (0, GOOD)))
        await worker.send(done(second, prompt=3))
        assert (await answer).status_code == 200

    def settled() -> bool:
        return len(records_of(gateway, key)) == 2

    wait_until(settled, timeout=10, what="both requests' records")
    statuses = {record["status"]: record for record in records_of(gateway, key)}
    assert statuses["cancelled"]["cost"]["micro_usd"] == 0
    assert statuses["succeeded"]["cost"]["micro_usd"] == 3000
    after = await asyncio.to_thread(credit, gateway, key)
    assert after["held"]["micro_usd"] == 0  # the hold of the one that left was given back
    assert after["balance"]["micro_usd"] == before["balance"]["micro_usd"] - 3000
