"""Hostile workers: anyone may run one, so nothing a worker sends may cost a user more
than the gateway saw, choose the status a client gets, reach the database or the log,
hold a request past a deadline, or grow the gateway's memory without bound.

Each worker here is a bare WebSocket speaking the wire protocol by hand. After every
test, nothing is held and the ledger adds up (:func:`assert_nothing_held`). The suite
runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from sqlalchemy import select

from infermesh.chat.accounting import COMPLETION_SLACK_TOKENS
from infermesh.mesh.remote import RemoteWorker
from infermesh.store import Database
from infermesh.store.tables import Base
from tests.mesh.helpers import (
    RawWorker,
    capture_logs,
    connected,
    job_chunk,
    job_done,
    own_key,
    raw_model_gateway,
)
from tests.support.gateway import RunningGateway
from tests.support.invariants import assert_nothing_held
from tests.support.waiting import wait_until

ADMIN_KEY = "hostile-admin"
IN_PER_MILLION = 1_000_000  # "1" USD per million prompt tokens: 1 micro-USD a token
OUT_PER_MILLION = 2_000_000
DEADLINE = 3.0


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with raw_model_gateway(
        request,
        tmp_path_factory.mktemp("hostile"),
        admin_key=ADMIN_KEY,
        first_token_timeout=DEADLINE,
        chunk_timeout=DEADLINE,
        request_timeout=30,
        queue_timeout=2,
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def nothing_held_after(gateway: RunningGateway) -> Iterator[None]:
    yield
    assert_nothing_held(gateway)


@pytest.fixture
async def key(gateway: RunningGateway) -> str:
    return await own_key(gateway)


def client(gateway: RunningGateway, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gateway.api_url, api_key=key, max_retries=0, timeout=60)


def ask(gateway: RunningGateway, key: str, text: str = "hi raw", **options: Any) -> Any:
    return asyncio.ensure_future(
        client(gateway, key).chat.completions.create(
            model="raw", messages=[{"role": "user", "content": text}], **options
        )
    )


def remote(gateway: RunningGateway, worker: RawWorker) -> RemoteWorker:
    node_id = worker.welcome["node_id"]
    found = [w for w in gateway.app.state.services.registry.workers() if w.node_id == node_id]
    assert found and isinstance(found[0], RemoteWorker)
    return found[0]


async def get_ok(gateway: RunningGateway, path: str, key: str) -> Any:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        response = await http.get(path, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, (path, response.status_code, response.text)
    return response.json()


async def answer_jobs(worker: RawWorker, text: str) -> None:
    """An honest worker: answers every job with ``text`` and true usage."""
    while True:
        job = await worker.next_job()
        await worker.send(job_chunk(job, text))
        await worker.send(job_done(job, prompt=4, completion=1))


async def test_inflated_usage_is_billed_at_the_gateways_count(
    gateway: RunningGateway, key: str
) -> None:
    async with connected(gateway, "inflator", concurrency=1) as worker:
        answer = ask(gateway, key)
        job = await worker.next_job()
        await worker.send(job_chunk(job, "hi"))
        await worker.send(job_done(job, prompt=5, completion=10**12))
        response = await answer
        node = remote(gateway, worker)
        assert node.strikes == 1

        # Billed what the gateway relayed ("hi": one token by its estimate), not 10^12.
        usage = response.usage
        assert usage.prompt_tokens == 5
        assert 1 <= usage.completion_tokens <= 2 + COMPLETION_SLACK_TOKENS
        expected = -(
            -(usage.prompt_tokens * IN_PER_MILLION + usage.completion_tokens * OUT_PER_MILLION)
            // 10**6
        )
        assert usage.model_extra is not None and usage.model_extra["cost_micro_usd"] == expected

        # Not fastest to the router: the job counts as a failure, not a success.
        stats = gateway.app.state.services.registry.stats(node.node_id)
        assert stats.failures == 1 and stats.tokens_per_second is None

        # The account's token buckets are not pushed into debt.
        limits = await get_ok(gateway, "/v1/limits", key)
        minute = limits["account_limits"]["tokens_per_minute"]
        assert minute["remaining"] >= minute["limit"] - 100

        # A second inflated report is the last: the connection is closed.
        again = ask(gateway, key)
        job = await worker.next_job()
        await worker.send(job_chunk(job, "hi"))
        await worker.send(job_done(job, prompt=5, completion=10**9))
        second = await again
        assert second.usage.completion_tokens <= 2 + COMPLETION_SLACK_TOKENS
        code, reason = await worker.closed()
    assert code == 1008 and reason is not None and "protocol violation" in reason

    # No 5xx anywhere after it; the operator earned a share of the fair price only.
    await get_ok(gateway, "/v1/credits/balance", key)
    await get_ok(gateway, "/v1/usage", key)
    earnings = await get_ok(gateway, "/admin/workers/earnings", ADMIN_KEY)
    earned = sum(row["earned"]["micro_usd"] for row in earnings["data"])
    assert 0 < earned <= 2 * expected


async def test_absurd_usage_closes_the_connection_with_no_5xx(
    gateway: RunningGateway, key: str
) -> None:
    async with connected(gateway, "absurd", concurrency=1) as worker:
        answer = ask(gateway, key)
        job = await worker.next_job()
        await worker.send(job_chunk(job, "hi"))
        await worker.send(json.dumps(job_done(job, prompt=5, completion=10**400)))
        code, reason = await worker.closed()
        with pytest.raises(openai.APIStatusError) as caught:
            await answer
    assert code == 1008 and reason is not None and "malformed frame" in reason
    assert caught.value.status_code in (502, 503)
    await get_ok(gateway, "/v1/credits/balance", key)
    await get_ok(gateway, "/v1/usage", key)
    await get_ok(gateway, "/admin/workers/earnings", ADMIN_KEY)


async def test_a_forged_error_never_reaches_the_client_the_database_or_the_log(
    gateway: RunningGateway, key: str
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    with capture_logs("infermesh") as logs:
        async with connected(gateway, "forger", concurrency=4) as forger:

            async def forge() -> None:
                while True:
                    job = await forger.next_job()
                    frame = {"type": "error", "job_id": job["id"], "status": 401}
                    await forger.send({**frame, "code": canary, "message": f"revoked {canary}"})

            forging = asyncio.create_task(forge())
            try:
                # Alone, the forger fails the request: a 502 of the gateway's words.
                with pytest.raises(openai.APIStatusError) as caught:
                    await ask(gateway, key, f"my secret prompt {canary}")
                assert caught.value.status_code == 502
                assert canary not in caught.value.response.text
                # With an honest worker beside it, the request fails over and succeeds.
                async with connected(gateway, "honest", concurrency=4) as honest:
                    answering = asyncio.create_task(answer_jobs(honest, "fine"))
                    try:
                        for _ in range(3):
                            response = await ask(gateway, key, f"again {canary}")
                            assert response.choices[0].message.content == "fine"
                    finally:
                        answering.cancel()
            finally:
                forging.cancel()
        stats = gateway.app.state.services.registry.stats(forger.welcome["node_id"])
        assert stats.failures >= 1
    assert not [line for line in logs.messages if canary in line]
    assert canary not in await database_text(gateway)


async def database_text(gateway: RunningGateway) -> str:
    """Every row of every table, as text."""
    database = Database.from_settings(gateway.settings)
    rows: list[str] = []
    try:
        async with database.session(read_only=True) as session:
            for table in Base.metadata.sorted_tables:
                rows += [repr(row) for row in await session.execute(select(table))]
    finally:
        await database.dispose()
    return "\n".join(rows)


async def test_a_flood_of_chunks_to_a_slow_reader_is_cut_off(
    gateway: RunningGateway, key: str, record_property: Any
) -> None:
    piece = "x" * 65_536
    frames = 1500  # ~100 MB of chunk frames
    opened, read = asyncio.Event(), asyncio.Event()
    async with connected(gateway, "flooder", concurrency=1) as worker:
        reader = asyncio.ensure_future(collect_stream(gateway, key, opened=opened, after=read))
        job = await worker.next_job()
        await worker.send(job_chunk(job, "first"))
        node = remote(gateway, worker)
        await asyncio.wait_for(opened.wait(), timeout=30)  # the stream has begun
        before = rss_bytes()
        for _ in range(frames):  # the client reads nothing meanwhile
            await worker.send(job_chunk(job, piece))
        await asyncio.to_thread(wait_until, lambda: node.dropped_frames >= frames - 10, timeout=120)
        grown = rss_bytes() - before
        record_property("gateway_rss_growth_mib", round(grown / 2**20, 1))
        read.set()
        events = await asyncio.wait_for(reader, timeout=60)
        assert node.strikes == 1
    assert grown < 64 * 2**20, f"the gateway grew by {grown / 2**20:.0f} MiB"
    error = json.loads(events[-2].removeprefix("data: "))
    assert error["error"]["code"] == "output_overflow"
    assert events[-1] == "data: [DONE]"
    relayed = sum(
        len(event["choices"][0]["delta"].get("content") or "")
        for event in (json.loads(line.removeprefix("data: ")) for line in events[:-2])
    )
    assert relayed <= 4096 * 32 + 4096 + len(piece)  # the job's cap, at most one chunk over


def rss_bytes() -> int:
    """The resident memory of this process (the gateway runs in it)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * 4096


async def test_a_worker_that_never_answers_is_timed_out_and_failed_over(
    gateway: RunningGateway, key: str
) -> None:
    async with connected(gateway, "silent", concurrency=1) as silent:
        answer = ask(gateway, key)
        await silent.next_job()  # ...and never a word about it
        async with connected(gateway, "rescuer", concurrency=1) as rescuer:
            answering = asyncio.create_task(answer_jobs(rescuer, "rescued"))
            try:
                response = await asyncio.wait_for(answer, timeout=DEADLINE + 20)
            finally:
                answering.cancel()
        assert response.choices[0].message.content == "rescued"
        assert response.metadata == {"node_id": rescuer.welcome["node_id"]}
        assert await asyncio.wait_for(silent.next_frame("cancel"), timeout=10)
        stats = gateway.app.state.services.registry.stats(silent.welcome["node_id"])
        assert stats.failures == 1


async def test_a_worker_that_goes_silent_midway_ends_the_stream(
    gateway: RunningGateway, key: str
) -> None:
    async with connected(gateway, "stalls", concurrency=1) as worker:
        answer = asyncio.ensure_future(collect_stream(gateway, key))
        job = await worker.next_job()
        await worker.send(job_chunk(job, "first words"))
        events = await asyncio.wait_for(answer, timeout=DEADLINE + 20)
        stats = gateway.app.state.services.registry.stats(worker.welcome["node_id"])
        assert stats.failures == 1
    assert "first words" in events[1]
    error = json.loads(events[-2].removeprefix("data: "))
    assert error["error"]["code"] == "worker_timeout"
    assert events[-1] == "data: [DONE]"


async def collect_stream(
    gateway: RunningGateway,
    key: str,
    *,
    opened: asyncio.Event | None = None,
    after: asyncio.Event | None = None,
) -> list[str]:
    """The data lines of a streamed request; ``opened`` is set once its answer has
    begun, and the lines are read once ``after`` is set."""
    async with (
        httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "raw", "messages": [{"role": "user", "content": "go"}], "stream": True},
        ) as response,
    ):
        assert response.status_code == 200
        if opened is not None:
            opened.set()
        if after is not None:
            await after.wait()
        return [line async for line in response.aiter_lines() if line.startswith("data:")]
