"""A request that runs longer than a credit hold lives keeps its hold: the credit slices
its gateway holds are renewed while they live, so a long answer is never settled against
an expired slice (a "late" charge, capped by whatever balance is left). On SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from infermesh.store import Database
from tests.gateway.test_careless_clients import ask
from tests.mesh.helpers import connected, job_chunk, job_done, own_key, raw_model_gateway
from tests.support.gateway import RunningGateway
from tests.support.invariants import assert_nothing_held


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def short_hold_gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """Holds that expire 1.5 s after they are taken unless renewed."""
    with raw_model_gateway(request, tmp_path_factory.mktemp("short-hold"), hold_ttl=1.5) as running:
        yield running


async def test_the_hold_of_a_request_longer_than_its_ttl_is_renewed(
    short_hold_gateway: RunningGateway,
) -> None:
    gateway = short_hold_gateway
    key = await own_key(gateway)
    async with connected(gateway, "long-job", concurrency=1) as worker:
        request = ask(gateway, key)
        job = await worker.next_job()
        for _ in range(10):  # 4 s of work, well past the hold's 1.5 s
            await worker.send(job_chunk(job, "x"))
            await asyncio.sleep(0.4)  # the worker's own pace, not a synchronisation
        await worker.send(job_done(job, prompt=3, completion=1))
        response = await request
    assert response.usage.model_extra is not None
    assert response.usage.model_extra["cost_micro_usd"] == 3 * 1 + 1 * 2
    assert_nothing_held(gateway)  # the settlement is written, the slice given back
    assert await entries_of(gateway, job["id"]) == [("charge", None), ("earning", None)]
    assert await expired_releases(gateway) == 0


async def expired_releases(gateway: RunningGateway) -> int:
    """How many holds of ``gateway``'s database were released because they expired."""
    from sqlalchemy import func, select

    from infermesh.store import LedgerEntry

    database = Database.from_settings(gateway.settings)
    try:
        async with database.session(read_only=True) as session:
            query = select(func.count()).where(LedgerEntry.reason == "expired")
            return int(await session.scalar(query) or 0)
    finally:
        await database.dispose()


async def entries_of(gateway: RunningGateway, reference: str) -> list[tuple[str, str | None]]:
    """The kinds and reasons of the ledger entries of one request, in order."""
    from sqlalchemy import select

    from infermesh.store import LedgerEntry

    database = Database.from_settings(gateway.settings)
    try:
        async with database.session(read_only=True) as session:
            rows = await session.execute(
                select(LedgerEntry.kind, LedgerEntry.reason)
                .where(LedgerEntry.reference == reference)
                .order_by(LedgerEntry.id)
            )
            return [(kind, reason) for kind, reason in rows]
    finally:
        await database.dispose()
