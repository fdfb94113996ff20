"""Job webhooks end to end: a real receiver gets each job's event, signed with the
account's secret (verified here as a receiver would), again after it answered 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infermesh.jobs.webhooks import verify
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.gateway.test_billing import PER_TOKEN, SECRETS, priced
from tests.jobs.test_jobs_api import ASYNC, Tenant
from tests.support.gateway import RunningGateway, start_gateway
from tests.support.servers import serve_app
from tests.support.waiting import wait_until


@dataclass
class Receiver:
    """A webhook receiver that records what it gets and answers as told."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    """Statuses to answer, in order; 200 once they run out."""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append((dict(request.headers), body))
            status = self.statuses.pop(0) if self.statuses else 200
        return Response(status_code=status)

    def events(self, job_id: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [
                (headers, body)
                for headers, body in self.received
                if orjson.loads(body)["data"]["id"] == job_id
            ]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    app = Starlette(routes=[Route("/hook", hook.handle, methods=["POST"])])
    with serve_app(app) as root:
        hook.url = f"{root}/hook"
        yield hook


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(api_key="upstream-secret") as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    specs = [
        priced("metered", PER_TOKEN, engine.base_url),
        priced("broken", PER_TOKEN, engine.base_url, engine_model="fail-500"),
    ]
    with start_gateway(
        tmp_path_factory.mktemp("webhooks"),
        specs=specs,
        secrets=SECRETS,
        wait_for=["metered", "broken"],
        job_poll_interval=0.05,
        job_retry_base=0.05,
        job_retry_cap=0.1,
        job_max_retries=1,
        webhook_allow_private=True,  # the receiver listens on 127.0.0.1
        webhook_retry_base=0.05,
        webhook_retry_cap=0.1,
    ) as running:
        yield running


def make_secret(tenant: Tenant) -> str:
    with tenant.http() as http:
        made = http.post("/v1/webhooks/secret")
        shown = http.get("/v1/webhooks/secret")
    assert made.status_code == 200, made.text
    secret: str = made.json()["secret"]
    assert secret.startswith("whsec_")
    assert shown.json() == {
        "object": "webhook_secret",
        "exists": True,
        "created": made.json()["created"],
    }
    return secret


def enqueue_with_hook(tenant: Tenant, model: str, url: str) -> httpx.Response:
    return tenant.enqueue(model, headers={**ASYNC, "x-infermesh-webhook-url": url})


def receiver_accepts(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does, computed here from the spec rather than with infermesh's code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
    return fresh and f"v1,{expected}" in headers["webhook-signature"].split()


def test_a_webhook_needs_the_accounts_secret(gateway: RunningGateway, receiver: Receiver) -> None:
    tenant = Tenant.create(gateway)
    response = enqueue_with_hook(tenant, "metered", receiver.url)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "webhook_secret_missing"
    with tenant.http() as http:
        assert http.get("/v1/webhooks/secret").json() == {
            "object": "webhook_secret",
            "exists": False,
        }


def test_a_finished_job_is_announced_signed(gateway: RunningGateway, receiver: Receiver) -> None:
    tenant = Tenant.create(gateway)
    secret = make_secret(tenant)
    response = enqueue_with_hook(tenant, "metered", receiver.url)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert tenant.wait(job_id)["status"] == "complete"

    wait_until(lambda: len(receiver.events(job_id)) == 1, timeout=30)
    ((headers, body),) = receiver.events(job_id)
    event: dict[str, Any] = orjson.loads(body)
    assert event["type"] == "job.complete"
    assert event["data"]["status"] == "complete"
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == event["id"]
    assert receiver_accepts(secret, headers, body)
    assert verify(secret, headers, body, now=int(time.time()))
    assert not verify(make_secret(tenant), headers, body, now=int(time.time()))  # rotated
    assert b"echo" not in body  # the event names the job; the result is fetched


def test_a_receiver_that_fails_gets_the_event_again(
    gateway: RunningGateway, receiver: Receiver
) -> None:
    tenant = Tenant.create(gateway)
    secret = make_secret(tenant)
    with receiver.lock:
        receiver.statuses[:] = [500, 503]
    job_id = enqueue_with_hook(tenant, "broken", receiver.url).json()["id"]
    assert tenant.wait(job_id)["status"] == "dead"

    wait_until(lambda: len(receiver.events(job_id)) == 3, timeout=30)
    attempts = receiver.events(job_id)
    assert {headers["webhook-id"] for headers, _ in attempts} == {attempts[0][0]["webhook-id"]}
    assert all(receiver_accepts(secret, headers, body) for headers, body in attempts)
    assert orjson.loads(attempts[-1][1])["type"] == "job.dead"
    with httpx.Client(base_url=gateway.base_url) as http:
        wait_until(
            lambda: http.get("/health").json()["queue"]["webhook_deliveries_pending"] == 0,
            timeout=30,
        )
