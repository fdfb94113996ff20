"""Async jobs end to end over real HTTP: enqueue, poll, list, cancel, retries into the
dead letter, deadlines, and one account's jobs hidden from another; with the money
checked in the ledger (held at enqueue, charged once, given back otherwise)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from infermesh.billing.ledger import CreditLedger
from infermesh.store.database import Database
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.gateway.test_billing import PER_TOKEN, SECRETS, priced, token_cost
from tests.support.gateway import RunningGateway, create_key, start_gateway_on
from tests.support.waiting import wait_until

GRANT = 5_000_000
ASYNC = {"Prefer": "respond-async"}
FINAL = {"complete", "failed", "dead", "cancelled", "expired"}
SERVED = ["metered", "broken", "slow"]


@pytest.fixture(scope="module")
def slow_engine() -> Iterator[ScriptedEngine]:
    with run_engine(api_key="upstream-secret", chunk_delay=0.2) as running:
        yield running


@pytest.fixture(scope="module")
def quick_engine() -> Iterator[ScriptedEngine]:
    with run_engine(api_key="upstream-secret") as running:
        yield running


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgresql", marks=pytest.mark.postgres),
    ],
)
def gateway(
    request: pytest.FixtureRequest,
    quick_engine: ScriptedEngine,
    slow_engine: ScriptedEngine,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    specs = [
        priced("metered", PER_TOKEN, quick_engine.base_url),
        priced("broken", PER_TOKEN, quick_engine.base_url, engine_model="fail-500"),
        priced("slow", PER_TOKEN, slow_engine.base_url),
        priced("unserved", PER_TOKEN, None),
    ]
    with start_gateway_on(
        request.param,
        tmp_path_factory.mktemp("jobs"),
        specs=specs,
        secrets=SECRETS,
        wait_for=SERVED,
        queue_timeout=0.2,
        job_poll_interval=0.05,
        job_retry_base=0.05,
        job_retry_cap=0.1,
        job_max_retries=3,
        job_lease=2.0,
        job_concurrent=2,
        job_concurrent_tiers={"pro": 3},  # the tenants here are "pro"
    ) as running:
        yield running


@dataclass
class Tenant:
    gateway: RunningGateway
    key: str
    account_id: int

    @classmethod
    def create(cls, gateway: RunningGateway) -> Tenant:
        name = f"tenant-{uuid.uuid4().hex[:12]}"
        key = asyncio.run(create_key(gateway.settings, name, grant=GRANT))
        with httpx.Client(base_url=gateway.base_url) as http:
            balance = http.get("/v1/credits/balance", headers=_auth(key)).json()
        assert balance["account"] == name
        account_id = asyncio.run(_account_id(gateway, name))
        return cls(gateway, key, account_id)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway.base_url, headers=_auth(self.key), timeout=60)

    def enqueue(self, model: str, text: str = "hello async world", **body: Any) -> httpx.Response:
        request = {"model": model, "messages": [{"role": "user", "content": text}], **body}
        headers = {**ASYNC, **body.pop("headers", {})} if "headers" in body else ASYNC
        with self.http() as http:
            return http.post("/v1/chat/completions", json=request, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        with self.http() as http:
            response = http.get(f"/v1/results/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def wait(self, job_id: str, statuses: set[str] = FINAL) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.job(job_id))
            return seen["status"] in statuses

        wait_until(reached, timeout=60, what=f"job {job_id} to reach {statuses}: {seen}")
        return seen

    def ledger(self) -> tuple[int, int]:
        """(balance, held) as the ledger has it, after the gateway wrote its batches."""
        with self.http() as http:
            balance = http.get("/v1/credits/balance").json()
        return balance["balance"]["micro_usd"], balance["held"]["micro_usd"]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _account_id(gateway: RunningGateway, name: str) -> int:
    database = Database.from_settings(gateway.settings)
    try:
        from infermesh.accounts.service import AccountService

        account = await AccountService(database).get_account(name)
        return int(account.id)
    finally:
        await database.dispose()


async def _ledger_totals(gateway: RunningGateway, account_id: int) -> tuple[int, int]:
    database = Database.from_settings(gateway.settings)
    try:
        totals = await CreditLedger(database).ledger_totals(account_id)
        return totals.balance, totals.held
    finally:
        await database.dispose()


def test_a_job_is_queued_then_completes_and_is_charged_once(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    response = tenant.enqueue("metered")

    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["object"] == "chat.completion.job"
    assert queued["status"] in {"queued", "processing"}
    assert queued["poll"] == f"/v1/results/{queued['id']}"
    assert response.headers["location"] == queued["poll"]
    assert response.headers["preference-applied"] == "respond-async"
    assert response.headers["x-request-id"]
    held = int(response.headers["x-infermesh-hold-micro-usd"])
    assert held > 0

    done = tenant.wait(queued["id"])
    assert done["status"] == "complete", done
    result = done["result"]
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["content"] == "echo: hello async world"
    usage = result["usage"]
    cost = token_cost(usage["prompt_tokens"], usage["completion_tokens"])
    assert usage["cost_micro_usd"] == cost
    assert result["metadata"]["node_id"]
    assert done["completed"] >= done["created"]

    wait_until(lambda: tenant.ledger() == (GRANT - cost, 0), timeout=30)
    assert asyncio.run(_ledger_totals(gateway, tenant.account_id)) == (GRANT - cost, 0)


def test_without_the_header_the_endpoint_stays_synchronous(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    with tenant.http() as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "metered", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Prefer": "return=minimal"},
        )
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"


def test_a_streamed_request_cannot_be_queued(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    response = tenant.enqueue("metered", stream=True)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "stream_not_queueable"
    assert tenant.ledger() == (GRANT, 0)


def test_refusals_come_before_anything_is_queued(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    unknown = tenant.enqueue("no-such-model")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    too_big = tenant.enqueue("metered", max_tokens=10**9)
    assert too_big.status_code in (400, 402)
    with tenant.http() as http:
        listed = http.get("/v1/results").json()
    assert listed["data"] == []


def test_jobs_are_listed_newest_first_without_results(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    ids = [tenant.enqueue("metered", f"job number {i}").json()["id"] for i in range(3)]
    for job_id in ids:
        tenant.wait(job_id)
    with tenant.http() as http:
        first = http.get("/v1/results", params={"limit": 2}).json()
        second = http.get("/v1/results", params={"limit": 2, "after": first["last_id"]}).json()
        complete = http.get("/v1/results", params={"status": "complete"}).json()
        bad = http.get("/v1/results", params={"status": "bogus"})

    assert [job["id"] for job in first["data"] + second["data"]] == ids[::-1]
    assert first["has_more"] is True
    assert second["has_more"] is False
    assert all("result" not in job for job in first["data"])
    assert {job["id"] for job in complete["data"]} == set(ids)
    assert bad.status_code == 400


def test_retryable_failures_retry_then_go_to_the_dead_letter(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    job_id = tenant.enqueue("broken").json()["id"]

    dead = tenant.wait(job_id)
    assert dead["status"] == "dead", dead
    assert dead["retries"] == 3
    assert dead["error"]["code"] == "backend_error"
    assert "result" not in dead
    wait_until(lambda: tenant.ledger() == (GRANT, 0), timeout=30)


def occupy(tenant: Tenant) -> list[str]:
    """Three slow jobs running for ``tenant``: its tier's share of the runners (three at
    once, not the default two) is full, so its next job stays queued."""
    words = " ".join(f"w{i}" for i in range(60))
    busy = [tenant.enqueue("slow", words).json()["id"] for _ in range(3)]
    for job_id in busy:
        tenant.wait(job_id, {"processing"})
    return busy


def test_a_queued_job_is_cancelled_at_once_and_costs_nothing(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    busy = occupy(tenant)
    job_id = tenant.enqueue("metered").json()["id"]
    assert tenant.job(job_id)["status"] == "queued"
    with tenant.http() as http:
        cancelled = http.delete(f"/v1/results/{job_id}")
        again = http.delete(f"/v1/results/{job_id}")
        for other in busy:
            http.delete(f"/v1/results/{other}")

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_finished"
    assert tenant.job(job_id)["status"] == "cancelled"
    for other in busy:
        assert tenant.wait(other)["status"] == "cancelled"
    wait_until(lambda: tenant.ledger()[1] == 0, timeout=30)
    with tenant.http() as http:
        usage = http.get("/v1/usage", params={"limit": 100}).json()["data"]
    charged = {record["id"]: record["cost"]["micro_usd"] for record in usage}
    assert charged.get(job_id, 0) == 0
    assert GRANT - tenant.ledger()[0] == sum(charged.get(other, 0) for other in busy)


def test_a_processing_job_is_stopped_and_pays_for_its_tokens(
    gateway: RunningGateway, slow_engine: ScriptedEngine
) -> None:
    tenant = Tenant.create(gateway)
    words = " ".join(f"w{i}" for i in range(200))
    before = slow_engine.events_sent
    job_id = tenant.enqueue("slow", words).json()["id"]
    tenant.wait(job_id, {"processing"})
    wait_until(lambda: slow_engine.events_sent >= before + 3, timeout=30)  # tokens made
    with tenant.http() as http:
        response = http.delete(f"/v1/results/{job_id}")
    assert response.status_code == 200, response.text

    final = tenant.wait(job_id)
    assert final["status"] == "cancelled"
    wait_until(lambda: tenant.ledger()[1] == 0, timeout=30)
    balance, _ = tenant.ledger()
    full_cost = token_cost(201, 201)
    assert 0 < GRANT - balance < full_cost


def test_a_job_not_started_by_its_deadline_expires(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    busy = occupy(tenant)
    response = tenant.enqueue("metered", headers={"x-infermesh-job-deadline": "1", **ASYNC})
    assert response.status_code == 202, response.text
    job = tenant.wait(response.json()["id"])
    with tenant.http() as http:
        for other in busy:
            http.delete(f"/v1/results/{other}")

    assert job["status"] == "expired"
    assert job["error"]["code"] == "job_expired"
    assert "started" not in job
    for other in busy:
        tenant.wait(other)
    wait_until(lambda: tenant.ledger()[1] == 0, timeout=30)


def test_bad_deadlines_are_refused(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    for value in ("0", "-5", "nan", "soon", str(10**9)):
        response = tenant.enqueue("metered", headers={"x-infermesh-job-deadline": value, **ASYNC})
        assert response.status_code == 400, value
        assert response.json()["error"]["code"] == "invalid_job_deadline"


def test_another_account_cannot_see_or_cancel_a_job(gateway: RunningGateway) -> None:
    owner, other = Tenant.create(gateway), Tenant.create(gateway)
    job_id = owner.enqueue("metered").json()["id"]
    with other.http() as http:
        seen = http.get(f"/v1/results/{job_id}")
        cancelled = http.delete(f"/v1/results/{job_id}")
        listed = http.get("/v1/results").json()
    assert seen.status_code == 404
    assert seen.json()["error"]["code"] == "job_not_found"
    assert cancelled.status_code == 404
    assert listed["data"] == []
    assert owner.wait(job_id)["status"] == "complete"


def test_unknown_and_malformed_ids_are_404(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    with tenant.http() as http:
        for job_id in ("job_doesnotexist", "x" * 100, "%00", "job_%E2%80%AE"):
            response = http.get(f"/v1/results/{job_id}")
            assert response.status_code == 404, job_id
            assert response.headers["x-request-id"]
        too_long = http.get(f"/v1/results/{'x' * 500}")
    assert too_long.status_code in (400, 404)


def test_the_queue_shows_on_health(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.base_url) as http:
        health = http.get("/health").json()
    queue = health["queue"]
    assert set(queue["jobs"]) >= {"queued", "processing", "complete", "dead"}
    assert "oldest_queued_seconds" in queue
    assert "completed_last_minute" in queue
    assert "webhook_deliveries_pending" in queue


def test_webhooks_to_the_gateways_own_network_are_refused(gateway: RunningGateway) -> None:
    tenant = Tenant.create(gateway)
    with tenant.http() as http:
        assert http.post("/v1/webhooks/secret").status_code == 200
    for url in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.0.0.1/x"):
        response = tenant.enqueue("metered", headers={"x-infermesh-webhook-url": url, **ASYNC})
        assert response.status_code == 400, url
        assert response.json()["error"]["code"] == "webhook_target_forbidden"
    bad = tenant.enqueue("metered", headers={"x-infermesh-webhook-url": "ftp://x", **ASYNC})
    assert bad.json()["error"]["code"] == "invalid_webhook_url"
    with tenant.http() as http:
        assert http.get("/v1/results").json()["data"] == []
    assert tenant.ledger() == (GRANT, 0)
