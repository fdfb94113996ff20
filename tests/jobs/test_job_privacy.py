"""An async job keeps its request only until it ends and its result only for its
retention, and logs neither."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import or_, select

from infermesh.store import AsyncJob, Database, WebhookDelivery
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.gateway.test_billing import PER_TOKEN, SECRETS, priced
from tests.jobs.test_jobs_api import ASYNC
from tests.support.gateway import RunningGateway, start_gateway
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(api_key="upstream-secret") as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with start_gateway(
        tmp_path_factory.mktemp("job-privacy"),
        specs=[priced("metered", PER_TOKEN, engine.base_url)],
        secrets=SECRETS,
        wait_for=["metered"],
        job_poll_interval=0.05,
        job_retention=3.0,
    ) as running:
        yield running


async def rows_holding(gateway: RunningGateway, canary: str) -> dict[str, int]:
    """How many jobs hold the canary in their request, and in their result."""
    database = Database.from_settings(gateway.settings)
    try:
        async with database.session(read_only=True) as session:
            like = f"%{canary}%"
            requests = await session.scalars(select(AsyncJob.id).where(AsyncJob.request.like(like)))
            results = await session.scalars(select(AsyncJob.id).where(AsyncJob.result.like(like)))
            events = await session.scalars(
                select(WebhookDelivery.id).where(
                    or_(WebhookDelivery.payload.like(like), WebhookDelivery.url.like(like))
                )
            )
            return {
                "request": len(requests.all()),
                "result": len(results.all()),
                "events": len(events.all()),
            }
    finally:
        await database.dispose()


def test_a_jobs_text_is_dropped_when_it_ends_and_gone_after_retention(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    canary = f"canary-{secrets.token_hex(8)}"
    caplog.set_level(logging.DEBUG)
    body = {"model": "metered", "messages": [{"role": "user", "content": f"repeat {canary}"}]}
    with httpx.Client(base_url=gateway.base_url, headers=gateway.auth(), timeout=60) as http:
        job_id = http.post("/v1/chat/completions", json=body, headers=ASYNC).json()["id"]

        def job() -> httpx.Response:
            return http.get(f"/v1/results/{job_id}")

        wait_until(lambda: job().json()["status"] == "complete", timeout=30)
        assert canary in job().json()["result"]["choices"][0]["message"]["content"]
        assert asyncio.run(rows_holding(gateway, canary)) == {
            "request": 0,  # dropped when the job ended
            "result": 1,  # kept for the retention
            "events": 0,
        }
        wait_until(lambda: job().status_code == 404, timeout=30)  # purged after retention

    assert asyncio.run(rows_holding(gateway, canary)) == {"request": 0, "result": 0, "events": 0}
    # What a deployment logs: infermesh's own lines at any level, and what libraries
    # say at INFO and above (aiosqlite's DEBUG lines echo SQL parameters: infermesh's
    # logging setup keeps them off).
    logged = "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("infermesh") or record.levelno >= logging.INFO
    )
    assert "infermesh.access" in {record.name for record in caplog.records}
    assert canary not in logged
