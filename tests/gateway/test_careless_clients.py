"""Careless clients: a client may give up at any moment (queued, before the first
token, midway, while its bill is being settled). Whatever the moment, the worker slot,
the concurrency slot and the credit hold come back at once, the request is billed
exactly once, and the next requests are served.

The worker is a bare WebSocket speaking the protocol by hand, so that each stage can be
held as long as a test needs. After every test nothing is held and the ledger adds up.
Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import openai
import pytest
from openai import AsyncOpenAI

from infermesh.store import Database
from tests.mesh.helpers import (
    JSON,
    RawWorker,
    connected,
    job_chunk,
    job_done,
    own_key,
    raw_model_gateway,
)
from tests.support.gateway import RunningGateway
from tests.support.invariants import assert_nothing_held, ledger_state
from tests.support.waiting import wait_until


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with raw_model_gateway(
        request,
        tmp_path_factory.mktemp("careless"),
        queue_timeout=30,  # only the client's own timeout ends a wait
        first_token_timeout=60,
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def nothing_held_after(gateway: RunningGateway) -> Iterator[None]:
    yield
    assert_nothing_held(gateway)


@pytest.fixture
async def key(gateway: RunningGateway) -> str:
    return await own_key(gateway)


def services(gateway: RunningGateway) -> Any:
    return gateway.app.state.services


def ask(gateway: RunningGateway, key: str, *, timeout: float = 60) -> Any:
    client = AsyncOpenAI(base_url=gateway.api_url, api_key=key, max_retries=0, timeout=timeout)
    return asyncio.ensure_future(
        client.chat.completions.create(model="raw", messages=[{"role": "user", "content": "hi"}])
    )


def done(job: JSON) -> JSON:
    return job_done(job, prompt=3, completion=1)


async def answer(worker: RawWorker, job: JSON, text: str = "ok") -> None:
    await worker.send(job_chunk(job, text))
    await worker.send(done(job))


def in_use(gateway: RunningGateway) -> tuple[int, int, int]:
    state = services(gateway)
    return state.registry.in_flight(), state.limits.slots_held, state.billing.open_holds


async def test_queued_clients_that_give_up_leave_the_model_available(
    gateway: RunningGateway, key: str
) -> None:
    async with connected(gateway, "one-slot", concurrency=1) as worker:
        first = ask(gateway, key)
        job = await worker.next_job()
        impatient = [ask(gateway, key, timeout=0.5) for _ in range(3)]
        for waiting in impatient:
            with pytest.raises(openai.APITimeoutError):
                await waiting
        with pytest.raises(httpx.ReadTimeout):  # a queued stream gives up too
            await open_stream(gateway, key, read_timeout=0.5)
        wait_until(lambda: services(gateway).registry.waiting() == 0, timeout=10)
        await answer(worker, job)
        assert (await first).choices[0].message.content == "ok"
        # The slot is free again: later requests are served, not "workers busy".
        for _ in range(2):
            later = ask(gateway, key)
            job = await worker.next_job()
            await answer(worker, job, "later")
            assert (await later).choices[0].message.content == "later"


async def test_a_stream_client_that_leaves_before_the_first_token_frees_everything_at_once(
    gateway: RunningGateway, key: str
) -> None:
    async with connected(gateway, "slow-start", concurrency=1) as worker:
        leaving = asyncio.ensure_future(open_stream(gateway, key, read_timeout=0.5))
        job = await worker.next_job()
        assert in_use(gateway) == (1, 1, 1)
        with pytest.raises(httpx.ReadTimeout):
            await leaving
        # Well before the first-token deadline (60 s): the worker is told to stop.
        await asyncio.wait_for(worker.next_frame("cancel", job_id=job["id"]), timeout=10)
        wait_until(lambda: in_use(gateway) == (0, 0, 0), timeout=10)


async def test_a_stream_client_that_leaves_midway_frees_everything_and_pays_for_what_it_got(
    gateway: RunningGateway, key: str
) -> None:
    async with connected(gateway, "midway", concurrency=1) as worker:
        got_first = asyncio.Event()
        leaving = asyncio.ensure_future(open_stream(gateway, key, leave_after=got_first))
        job = await worker.next_job()
        await worker.send(
            {
                "type": "chunk",
                "job_id": job["id"],
                "chunk": {
                    "content": "one ",
                    "progress": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                },
            }
        )
        await asyncio.wait_for(got_first.wait(), timeout=10)
        await leaving
        await asyncio.wait_for(worker.next_frame("cancel", job_id=job["id"]), timeout=10)
        wait_until(lambda: in_use(gateway) == (0, 0, 0), timeout=10)


async def test_a_settlement_the_database_cannot_take_yet_is_billed_exactly_once(
    gateway: RunningGateway, key: str
) -> None:
    """Settlements are written in batches, off the request path: an answer does not
    wait for the database, and a batch that cannot be written yet is written later,
    once."""
    billing = services(gateway).billing
    async with connected(gateway, "settles", concurrency=1) as worker:
        request = asyncio.ensure_future(post_completion(gateway, key))
        job = await worker.next_job()
        async with database_locked(gateway):
            await answer(worker, job)
            response = await request
            assert response.status_code == 200
            assert response.headers["x-infermesh-cost-micro-usd"] == str(3 * 1 + 1 * 2)
            assert in_use(gateway) == (0, 0, 0)
            assert billing.slices.waiting() > 0  # written once the lock is gone
        wait_until(lambda: billing.slices.waiting() == 0, timeout=30)
    charges = await charges_of(gateway, job["id"])
    assert len(charges) == 1 and charges[0] == 3 * 1 + 1 * 2
    assert ledger_state(gateway.settings).open_holds == 0


async def post_completion(gateway: RunningGateway, key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        return await http.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "raw", "messages": [{"role": "user", "content": "hi"}]},
        )


async def open_stream(
    gateway: RunningGateway,
    key: str,
    *,
    read_timeout: float = 60,
    leave_after: asyncio.Event | None = None,
) -> None:
    """A streamed request that gives up after ``read_timeout`` s without a byte, or
    hangs up once it has read the first piece of content (``leave_after`` is set)."""
    timeout = httpx.Timeout(60, read=read_timeout)
    async with (
        httpx.AsyncClient(base_url=gateway.base_url, timeout=timeout) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "raw", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ) as response,
    ):
        async for line in response.aiter_lines():
            if leave_after is not None and '"content":"one' in line:
                leave_after.set()
                return


@asynccontextmanager
async def database_locked(gateway: RunningGateway) -> AsyncIterator[None]:
    """Hold the database's write lock (SQLite) or every credit hold's row (PostgreSQL)
    for the block, so that settlements cannot be written until it ends."""
    url = gateway.settings.resolved_database_url
    if url.startswith("sqlite"):
        connection = sqlite3.connect(str(gateway.settings.data_dir / "infermesh.db"))
        connection.isolation_level = None
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            await connection.execute("SELECT id FROM holds FOR UPDATE")
            yield
    finally:
        await connection.close()


async def charges_of(gateway: RunningGateway, reference: str) -> list[int]:
    """The amounts charged for the request whose completion id is ``reference``."""
    from sqlalchemy import select

    from infermesh.store import LedgerEntry

    database = Database.from_settings(gateway.settings)
    try:
        async with database.session(read_only=True) as session:
            rows = await session.scalars(
                select(LedgerEntry.balance_change).where(
                    LedgerEntry.kind == "charge", LedgerEntry.reference == reference
                )
            )
            return [-change for change in rows]
    finally:
        await database.dispose()
