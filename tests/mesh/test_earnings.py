"""Operators earn their share of what their workers are paid: a real ``infermesh worker``
process of operator "alice" serves a priced model on the scripted engine; the gateway's
in-process worker serves another, and pays nobody."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from infermesh.accounts.service import AccountService
from infermesh.accounts.workers import CreatedWorkerToken, WorkerTokenService
from infermesh.billing.ledger import CreditLedger
from infermesh.config import Settings
from infermesh.store import LedgerEntry
from infermesh.store.database import Database
from tests.fakes.engine import ScriptedEngine
from tests.gateway.test_billing import PER_TOKEN, SECRETS, Customer, cost_of, priced, token_cost
from tests.mesh.helpers import HEARTBEAT, WorkerProcess, openai_worker, run_worker
from tests.support.gateway import RunningGateway, start_gateway, wait_until_available
from tests.support.invariants import wait_written

ADMIN_KEY = "earnings-admin-key"
OPERATOR = "alice"


@dataclass
class Mesh:
    gateway: RunningGateway
    worker: WorkerProcess
    token: CreatedWorkerToken

    @property
    def share_bps(self) -> int:
        return round(self.gateway.settings.operator_share * 10_000)


async def _operator_token(settings: Settings, name: str = "alice-gpu-1") -> CreatedWorkerToken:
    database = Database(settings.resolved_database_url)
    try:
        return await WorkerTokenService(database).create(name, operator=OPERATOR)
    finally:
        await database.dispose()


async def _money(settings: Settings) -> tuple[int, int]:
    """(alice's balance, how many earning entries the whole ledger holds)."""
    database = Database(settings.resolved_database_url)
    try:
        alice = await AccountService(database).get_account(OPERATOR)
        balance = await CreditLedger(database).balance(alice.id)
        async with database.session(read_only=True) as session:
            earnings = await session.scalar(
                select(func.count(LedgerEntry.id)).where(LedgerEntry.kind == "earning")
            )
        return balance.balance, int(earnings or 0)
    finally:
        await database.dispose()


def money(mesh: Mesh) -> tuple[int, int]:
    wait_written(mesh.gateway)
    return asyncio.run(_money(mesh.gateway.settings))


@pytest.fixture(scope="module", params=[0.8, 0.5], ids=["share-0.8", "share-0.5"])
def mesh(
    request: pytest.FixtureRequest,
    engine: ScriptedEngine,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mesh]:
    specs = [
        priced("remote-paid", PER_TOKEN, None),
        priced("remote-slow", PER_TOKEN, None),
        priced("local-paid", PER_TOKEN, engine.base_url),
    ]
    settings: dict[str, Any] = {"admin_key": ADMIN_KEY, **HEARTBEAT}
    if request.param != 0.8:  # 0.8 is the default
        settings["operator_share"] = request.param
    with start_gateway(
        tmp_path_factory.mktemp("earnings"), specs=specs, secrets=SECRETS, **settings
    ) as gateway:
        assert gateway.settings.operator_share == request.param
        token = asyncio.run(_operator_token(gateway.settings))
        with run_worker(
            gateway,
            *openai_worker(engine, "remote-paid"),
            token=token,
            data_dir=tmp_path_factory.mktemp("alice-worker"),
        ) as worker:
            wait_until_available(gateway.base_url, ["remote-paid", "local-paid"])
            yield Mesh(gateway, worker, token)


def earnings(mesh: Mesh) -> dict[str, Any]:
    with mesh.gateway.http() as http:
        response = http.get(
            "/admin/workers/earnings", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
    assert response.status_code == 200, response.text
    rows = {row["worker_id"]: row for row in response.json()["data"]}
    return rows[mesh.token.record.id]


def test_the_operator_earns_a_share_of_what_its_worker_is_paid(mesh: Mesh) -> None:
    customer = Customer.create(mesh.gateway)
    client = customer.client()
    before, entries = money(mesh)
    plain = client.chat.completions.create(
        model="remote-paid", messages=[{"role": "user", "content": "what does this cost me today"}]
    )
    assert plain.metadata == {"node_id": mesh.worker.node_id}
    assert plain.usage is not None
    cost = cost_of(plain.usage)
    assert cost == token_cost(6, 7) == 11
    share = cost * mesh.share_bps // 10_000  # 8 of 11 at 0.8, 5 of 11 at 0.5: rounded down
    assert money(mesh) == (before + share, entries + 1)

    streamed = list(
        client.chat.completions.create(
            model="remote-paid",
            messages=[{"role": "user", "content": "and a streamed one costs what"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert streamed[-1].usage is not None
    stream_cost = cost_of(streamed[-1].usage)
    assert stream_cost == token_cost(6, 7)
    stream_share = stream_cost * mesh.share_bps // 10_000
    assert money(mesh) == (before + share + stream_share, entries + 2)
    assert customer.balance() == (customer.grant - cost - stream_cost, 0)

    row = earnings(mesh)
    assert (row["name"], row["operator"]) == ("alice-gpu-1", OPERATOR)
    assert row["requests"] == 2
    assert (row["prompt_tokens"], row["completion_tokens"]) == (12, 14)
    assert row["billed"]["micro_usd"] == cost + stream_cost
    assert row["earned"]["micro_usd"] == share + stream_share


def test_a_request_served_in_process_credits_nobody(mesh: Mesh) -> None:
    customer = Customer.create(mesh.gateway)
    before = money(mesh)
    row = earnings(mesh)
    completion = customer.client().chat.completions.create(
        model="local-paid", messages=[{"role": "user", "content": "served by the gateway itself"}]
    )
    assert completion.metadata == {"node_id": "local"}
    assert completion.usage is not None
    cost = cost_of(completion.usage)
    assert cost == token_cost(5, 6) > 0
    assert customer.balance() == (customer.grant - cost, 0)
    assert money(mesh) == before
    assert earnings(mesh) == row


def test_earnings_can_be_filtered_by_operator_and_need_the_admin_key(mesh: Mesh) -> None:
    with mesh.gateway.http() as http:
        mine = http.get(
            "/admin/workers/earnings",
            params={"operator": OPERATOR},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        nobody = http.get(
            "/admin/workers/earnings",
            params={"operator": "bob"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        as_user = http.get("/admin/workers/earnings", headers=mesh.gateway.auth())
    assert [row["worker_id"] for row in mine.json()["data"]] == [mesh.token.record.id]
    assert nobody.json()["data"] == []
    assert as_user.status_code == 401


def test_a_worker_lost_mid_stream_charges_nothing_and_pays_nobody(
    mesh: Mesh, slow_engine: ScriptedEngine, tmp_path: Path
) -> None:
    gateway = mesh.gateway
    token = asyncio.run(_operator_token(gateway.settings, "alice-gpu-doomed"))
    customer = Customer.create(gateway)
    before = money(mesh)
    body = {
        "model": "remote-slow",
        "messages": [{"role": "user", "content": " ".join(["word"] * 200)}],
        "stream": True,
    }
    with run_worker(
        gateway, *openai_worker(slow_engine, "remote-slow"), token=token, data_dir=tmp_path
    ) as worker:
        wait_until_available(gateway.base_url, ["remote-slow"])
        with (
            gateway.http() as http,
            http.stream("POST", "/v1/chat/completions", json=body, headers=customer.auth()) as sse,
        ):
            lines = sse.iter_lines()
            first = next(line for line in lines if '"content":"echo:' in line)
            worker.process.process.kill()
            rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert any('"error"' in line for line in rest), rest
    completion_id = json.loads(first.removeprefix("data: "))["id"]
    record = customer.usage(completion_id)
    assert (record["status"], record["cost"]["micro_usd"]) == ("failed", 0)
    assert record["completion_tokens"] > 0  # it was cut short, not never started
    assert customer.balance() == (customer.grant, 0)
    assert money(mesh) == before
