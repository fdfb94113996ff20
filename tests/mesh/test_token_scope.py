"""A worker token's scope is enforced at the handshake: live connections per token, the
models it may serve, and the job slots one connection may announce.

The workers here are bare WebSocket clients that speak the protocol by hand; the
gateway runs in this process, so its registry is read directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from infermesh.accounts.workers import CreatedWorkerToken, WorkerScope, WorkerTokenService
from infermesh.gateway.routes.workers import NO_SLOT_LEFT, NOT_ALLOWED, NOT_IN_CATALOG
from infermesh.mesh.registry import WorkerRegistry
from infermesh.mesh.remote import RemoteWorker
from infermesh.protocol.wire import PROTOCOL_VERSION
from infermesh.store import Database
from tests.mesh.helpers import capture_logs, raw_worker
from tests.support.gateway import RunningGateway
from tests.support.waiting import wait_until

JSON = dict[str, Any]


async def scoped_token(
    gateway: RunningGateway, name: str, scope: WorkerScope | None = None
) -> CreatedWorkerToken:
    """A new worker on ``gateway``'s database whose token allows ``scope``."""
    database = Database.from_settings(gateway.settings)
    try:
        return await WorkerTokenService(database).create(name, scope=scope)
    finally:
        await database.dispose()


def hello(*models: tuple[str, int]) -> str:
    served = [{"id": model, "concurrency": slots} for model, slots in models]
    frame = {
        "type": "hello",
        "protocol_version": PROTOCOL_VERSION,
        "worker_version": "raw",
        "models": served,
    }
    return json.dumps(frame)


async def beat(websocket: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await websocket.send(json.dumps({"type": "heartbeat"}))
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def handshake(
    gateway: RunningGateway, token: CreatedWorkerToken, *models: tuple[str, int]
) -> AsyncIterator[tuple[JSON, ClientConnection]]:
    """Say hello; yield the gateway's answer (heartbeats go on while it is a welcome)."""
    async with raw_worker(gateway, token.token) as websocket:
        await websocket.send(hello(*models))
        answer: JSON = json.loads(await websocket.recv())
        beating = asyncio.create_task(beat(websocket))
        try:
            yield answer, websocket
        finally:
            beating.cancel()


async def refusal(
    gateway: RunningGateway, token: CreatedWorkerToken, *models: tuple[str, int]
) -> JSON:
    """The ``refused`` frame the hello gets; the gateway then closes with 1008."""
    async with handshake(gateway, token, *models) as (answer, websocket):
        assert answer["type"] == "refused", answer
        await websocket.wait_closed()
    assert websocket.close_code == 1008
    return answer


def registry(gateway: RunningGateway) -> WorkerRegistry:
    found: WorkerRegistry = gateway.app.state.services.registry
    return found


def connections(gateway: RunningGateway, token: CreatedWorkerToken) -> list[RemoteWorker]:
    """The connections of ``token`` in the gateway's registry."""
    return [
        worker
        for worker in registry(gateway).workers()
        if isinstance(worker, RemoteWorker) and worker.worker_id == token.record.id
    ]


def remote(gateway: RunningGateway, node_id: str) -> RemoteWorker:
    (found,) = [worker for worker in registry(gateway).workers() if worker.node_id == node_id]
    assert isinstance(found, RemoteWorker)
    return found


async def wait_connections(gateway: RunningGateway, token: CreatedWorkerToken, count: int) -> None:
    def reached() -> bool:
        return len(connections(gateway, token)) == count

    await asyncio.to_thread(wait_until, reached, timeout=10, what=f"{count} connections")


# --- live connections --------------------------------------------------------------


async def test_a_token_holds_two_connections_by_default(mesh_gateway: RunningGateway) -> None:
    token = await scoped_token(mesh_gateway, "two-by-default")
    async with (
        handshake(mesh_gateway, token, ("raw", 1)) as (first, _),
        handshake(mesh_gateway, token, ("raw", 1)) as (second, _),
    ):
        assert (first["type"], second["type"]) == ("welcome", "welcome")
        third = await refusal(mesh_gateway, token, ("raw", 1))
        assert third["code"] == "too_many_connections"
        assert "2 live connection(s)" in third["reason"]
        assert len(connections(mesh_gateway, token)) == 2


async def test_a_connection_beyond_max_connections_is_refused_until_one_leaves(
    mesh_gateway: RunningGateway,
) -> None:
    token = await scoped_token(mesh_gateway, "single", WorkerScope(max_connections=1))
    with capture_logs("infermesh.gateway") as logs:
        async with handshake(mesh_gateway, token, ("raw", 1)) as (first, _):
            assert first["type"] == "welcome"
            refused = await refusal(mesh_gateway, token, ("raw", 1))
            assert refused["code"] == "too_many_connections"
            assert "allows 1" in refused["reason"]
        logs.wait_for("refused (too_many_connections)")
    await wait_connections(mesh_gateway, token, 0)
    async with handshake(mesh_gateway, token, ("raw", 1)) as (again, _):
        assert again["type"] == "welcome"
        assert again["node_id"] == first["node_id"]


# --- models --------------------------------------------------------------------------


async def test_models_the_token_does_not_allow_are_refused(mesh_gateway: RunningGateway) -> None:
    token = await scoped_token(mesh_gateway, "raw-only", WorkerScope(allowed_models=("raw",)))
    models = [("scripted", 2), ("raw", 2), ("not-in-catalog", 1)]
    async with handshake(mesh_gateway, token, *models) as (welcome, _):
        assert welcome["type"] == "welcome", welcome
        assert welcome["accepted"] == ["raw"]
        assert welcome["refused"] == [
            {"id": "scripted", "reason": NOT_ALLOWED},
            {"id": "not-in-catalog", "reason": NOT_IN_CATALOG},
        ]
        assert remote(mesh_gateway, welcome["node_id"]).models == ["raw"]

    refused = await refusal(mesh_gateway, token, ("scripted", 2), ("spread", 1))
    assert refused["code"] == "no_known_models"
    assert f"scripted: {NOT_ALLOWED}" in refused["reason"]
    assert f"spread: {NOT_ALLOWED}" in refused["reason"]


# --- job slots -----------------------------------------------------------------------


async def test_slots_beyond_max_slots_are_clamped(mesh_gateway: RunningGateway) -> None:
    token = await scoped_token(mesh_gateway, "greedy")
    with capture_logs("infermesh.gateway") as logs:
        async with handshake(mesh_gateway, token, ("raw", 4096)) as (welcome, _):
            assert welcome["type"] == "welcome", welcome
            assert (welcome["accepted"], welcome["refused"]) == (["raw"], [])
            assert remote(mesh_gateway, welcome["node_id"]).capacity("raw") == 64
        line = logs.wait_for("more job slots than its token's max_slots (64)")
    assert "raw 4096 -> 64" in line


async def test_slots_are_shared_and_models_past_the_budget_refused(
    mesh_gateway: RunningGateway,
) -> None:
    token = await scoped_token(mesh_gateway, "many-models", WorkerScope(max_slots=2))
    models = [("raw", 100), ("spread", 3), ("slow", 1)]
    async with handshake(mesh_gateway, token, *models) as (welcome, _):
        assert welcome["accepted"] == ["raw", "spread"]
        assert welcome["refused"] == [{"id": "slow", "reason": NO_SLOT_LEFT.format(max_slots=2)}]
        worker = remote(mesh_gateway, welcome["node_id"])
        assert (worker.capacity("raw"), worker.capacity("spread")) == (1, 1)


async def test_slots_within_max_slots_are_kept(mesh_gateway: RunningGateway) -> None:
    token = await scoped_token(mesh_gateway, "modest", WorkerScope(max_slots=10))
    async with handshake(mesh_gateway, token, ("raw", 4), ("spread", 6)) as (welcome, _):
        worker = remote(mesh_gateway, welcome["node_id"])
        assert (worker.capacity("raw"), worker.capacity("spread")) == (4, 6)


# --- the arithmetic ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "requested", "slots", "dropped"),
    [
        (64, [("a", 4096)], {"a": 64}, []),
        (64, [("a", 10), ("b", 54)], {"a": 10, "b": 54}, []),
        (64, [("a", 4096), ("b", 1), ("c", 100)], {"a": 61, "b": 1, "c": 2}, []),
        (10, [("a", 3), ("b", 3), ("c", 3), ("d", 3)], {"a": 3, "b": 3, "c": 2, "d": 2}, []),
        (2, [("a", 4096), ("b", 1), ("c", 100)], {"a": 1, "b": 1}, ["c"]),
        (1, [("a", 1), ("b", 1)], {"a": 1}, ["b"]),
    ],
)
def test_fit_slots(
    budget: int, requested: list[tuple[str, int]], slots: dict[str, int], dropped: list[str]
) -> None:
    fit = WorkerScope(max_slots=budget).fit_slots(requested)
    assert (fit.slots, fit.dropped) == (slots, dropped)
    assert list(fit.slots) == [model for model, _ in requested if model in slots]
    assert sum(fit.slots.values()) <= budget


def test_fit_slots_never_gives_more_than_asked_and_fills_the_budget() -> None:
    for budget in range(1, 40):
        requested = [(f"m{index}", 1 + (index * 7919) % 97) for index in range(12)]
        fit = WorkerScope(max_slots=budget).fit_slots(requested)
        asked = dict(requested)
        assert all(1 <= fit.slots[model] <= asked[model] for model in fit.slots)
        assert sum(fit.slots.values()) == min(budget, sum(asked.values()))
        assert len(fit.slots) + len(fit.dropped) == len(requested)


def test_allows() -> None:
    assert WorkerScope().allows("anything")
    scoped = WorkerScope(allowed_models=("a", "b"))
    assert scoped.allows("a") and not scoped.allows("c")
