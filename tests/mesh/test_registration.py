"""Workers connect, register their models, serve through the gateway, and leave.

Real ``infermesh worker`` processes dial a real gateway over WebSockets; the client is
the ``openai`` SDK.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from infermesh.accounts.workers import CreatedWorkerToken, WorkerScope, WorkerTokenService
from infermesh.gateway.routes.workers import NOT_ALLOWED
from infermesh.protocol.wire import PROTOCOL_VERSION
from infermesh.store import Database
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.mesh.helpers import (
    create_worker_token,
    health,
    model_available,
    openai_worker,
    raw_worker,
    revoke_worker,
    run_worker,
    worker_token,
)
from tests.support.gateway import RunningGateway
from tests.support.waiting import wait_until

HELLO = [{"role": "user", "content": "hello mesh"}]


def test_a_worker_registers_serves_and_leaves(
    mesh_gateway: RunningGateway, engine: ScriptedEngine, worker_dir: Path
) -> None:
    assert not model_available(mesh_gateway, "scripted")
    with run_worker(
        mesh_gateway, *openai_worker(engine, "scripted"), data_dir=worker_dir
    ) as worker:
        assert worker.token is not None
        assert worker.node_id == worker.token.record.id
        assert model_available(mesh_gateway, "scripted")
        assert worker.node_id in [entry["node_id"] for entry in health(mesh_gateway)["workers"]]

        client = mesh_gateway.client()
        response = client.chat.completions.create(model="scripted", messages=HELLO)
        assert response.choices[0].message.content == "echo: hello mesh"
        assert response.metadata == {"node_id": worker.node_id}
        assert response.usage is not None and response.usage.total_tokens > 0

        stream = client.chat.completions.create(model="scripted", messages=HELLO, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == "echo: hello mesh"
        worker.process.wait_for_line("served")
        assert worker.process.stop() == 0
    wait_until(lambda: not model_available(mesh_gateway, "scripted"), what="model unavailable")
    assert "hello mesh" not in worker.process.output  # workers never log content


def test_an_upstream_key_reaches_the_engine_and_is_never_shown(
    mesh_gateway: RunningGateway, worker_dir: Path
) -> None:
    with run_engine(models=["scripted-1"], api_key="upstream-secret") as keyed_engine:
        options = [*openai_worker(keyed_engine, "slow"), "--upstream-key", "upstream-secret"]
        with run_worker(mesh_gateway, *options, data_dir=worker_dir) as worker:
            response = mesh_gateway.client().chat.completions.create(model="slow", messages=HELLO)
            assert response.choices[0].message.content == "echo: hello mesh"
    assert "upstream-secret" not in worker.process.output


def test_the_tiny_model_on_a_transformers_worker(
    mesh_gateway: RunningGateway, worker_dir: Path
) -> None:
    options = ["--backend", "transformers", "--serve", "infermesh-tiny", "--name", "cpu-box"]
    with run_worker(mesh_gateway, *options, data_dir=worker_dir) as worker:
        client = mesh_gateway.client()
        response = client.chat.completions.create(
            model="infermesh-tiny", messages=HELLO, max_tokens=5
        )
        assert response.choices[0].finish_reason in {"stop", "length"}
        assert response.metadata == {"node_id": worker.node_id}
        chunks = list(
            client.chat.completions.create(
                model="infermesh-tiny", messages=HELLO, max_tokens=5, stream=True
            )
        )
        assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert (worker_dir / "models" / "infermesh-tiny" / "config.json").exists()


def test_load_spreads_across_workers_of_a_model(
    mesh_gateway: RunningGateway, slow_engine: ScriptedEngine, worker_dir: Path
) -> None:
    options = openai_worker(slow_engine, "spread", concurrency=8)
    with (  # both start at once, then both must register
        run_worker(mesh_gateway, *options, data_dir=worker_dir, registered=False) as first,
        run_worker(mesh_gateway, *options, data_dir=worker_dir, registered=False) as second,
    ):
        assert first.node_id and second.node_id
        client = mesh_gateway.client()

        def ask(index: int) -> str:
            response = client.chat.completions.create(
                model="spread", messages=[{"role": "user", "content": f"job {index}"}]
            )
            assert response.choices[0].message.content == f"echo: job {index}"
            assert response.metadata is not None
            return str(response.metadata["node_id"])

        with ThreadPoolExecutor(max_workers=20) as pool:
            served_by = Counter(pool.map(ask, range(20)))
    assert set(served_by) == {first.node_id, second.node_id}, served_by


def test_the_same_token_twice_gets_two_node_ids(
    mesh_gateway: RunningGateway, engine: ScriptedEngine, worker_dir: Path
) -> None:
    token = worker_token(mesh_gateway, "twice")
    options = openai_worker(engine, "scripted")
    with (
        run_worker(mesh_gateway, *options, token=token, data_dir=worker_dir) as first,
        run_worker(mesh_gateway, *options, token=token, data_dir=worker_dir) as second,
    ):
        assert {first.node_id, second.node_id} == {token.record.id, f"{token.record.id}-2"}


def test_a_worker_token_is_not_an_api_key(mesh_gateway: RunningGateway) -> None:
    token = worker_token(mesh_gateway, "not-a-key")
    client = mesh_gateway.client(api_key=token.token)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model="scripted", messages=HELLO)
    assert raised.value.status_code == 401


@pytest.mark.parametrize("kind", ["user api key", "unknown token"])
def test_only_worker_tokens_connect(
    kind: str, mesh_gateway: RunningGateway, engine: ScriptedEngine, worker_dir: Path
) -> None:
    token = mesh_gateway.key if kind == "user api key" else "imw_not-a-real-token"
    options = openai_worker(engine, "scripted")
    with run_worker(
        mesh_gateway, *options, token=token, data_dir=worker_dir, registered=False
    ) as worker:
        assert worker.wait_exit() != 0
        worker.process.wait_for_line("refused by the gateway (unauthorized)")
        assert "Invalid or revoked worker token" in worker.process.output
        assert "registered as node" not in worker.process.output


def test_models_outside_the_catalog_are_refused_with_a_reason(
    mesh_gateway: RunningGateway, engine: ScriptedEngine, worker_dir: Path
) -> None:
    options = openai_worker(engine, "scripted", "not-in-catalog")
    with run_worker(mesh_gateway, *options, data_dir=worker_dir) as worker:
        worker.process.wait_for_line(
            "model not-in-catalog refused: not in this gateway's model catalog"
        )

    only_unknown = openai_worker(engine, "not-in-catalog")
    with run_worker(mesh_gateway, *only_unknown, data_dir=worker_dir, registered=False) as worker:
        assert worker.wait_exit() != 0
        line = worker.process.wait_for_line("refused by the gateway (no_known_models)")
        assert "not-in-catalog" in line


def scoped_token(gateway: RunningGateway, name: str, scope: WorkerScope) -> CreatedWorkerToken:
    async def create() -> CreatedWorkerToken:
        database = Database.from_settings(gateway.settings)
        try:
            return await WorkerTokenService(database).create(name, scope=scope)
        finally:
            await database.dispose()

    return asyncio.run(create())


def test_a_token_serves_only_its_models_with_at_most_its_slots(
    mesh_gateway: RunningGateway, engine: ScriptedEngine, worker_dir: Path
) -> None:
    token = scoped_token(mesh_gateway, "scoped", WorkerScope(max_slots=3, allowed_models=("raw",)))
    options = openai_worker(engine, "scripted", "raw", concurrency=50)
    with run_worker(mesh_gateway, *options, token=token, data_dir=worker_dir) as worker:
        worker.process.wait_for_line(f"model scripted refused: {NOT_ALLOWED}")
        assert model_available(mesh_gateway, "raw")
        assert not model_available(mesh_gateway, "scripted")
        response = mesh_gateway.client().chat.completions.create(model="raw", messages=HELLO)
        assert response.choices[0].message.content == "echo: hello mesh"
        (remote,) = [
            entry
            for entry in mesh_gateway.app.state.services.registry.workers()
            if entry.node_id == worker.node_id
        ]
        assert remote.capacity("raw") == 3

    only_other = openai_worker(engine, "scripted")
    with run_worker(
        mesh_gateway, *only_other, token=token, data_dir=worker_dir, registered=False
    ) as worker:
        assert worker.wait_exit() != 0
        line = worker.process.wait_for_line("refused by the gateway (no_known_models)")
        assert NOT_ALLOWED in line


async def test_an_old_protocol_version_is_refused_clearly(mesh_gateway: RunningGateway) -> None:
    token = await _token(mesh_gateway, "old-worker")
    old_hello = {"type": "hello", "protocol_version": 0, "models": ["scripted"]}
    async with raw_worker(mesh_gateway, token) as websocket:
        await websocket.send(json.dumps(old_hello))
        refused = json.loads(await websocket.recv())
        await websocket.wait_closed()
    assert refused["type"] == "refused"
    assert refused["code"] == "unsupported_protocol"
    assert f"version {PROTOCOL_VERSION}" in refused["reason"]
    assert websocket.close_code == 1008


def test_a_revoked_worker_is_disconnected(
    mesh_gateway: RunningGateway, engine: ScriptedEngine, worker_dir: Path
) -> None:
    with run_worker(
        mesh_gateway, *openai_worker(engine, "scripted"), data_dir=worker_dir
    ) as worker:
        assert worker.token is not None
        revoke_worker(mesh_gateway, worker.token.record.id)
        worker.process.wait_for_line("the worker token was revoked", timeout=5)
        # It dials again, is refused for good, and stops.
        worker.process.wait_for_line("refused by the gateway (unauthorized)", timeout=10)
        assert worker.wait_exit(timeout=10) != 0
    assert worker.node_id not in [entry["node_id"] for entry in health(mesh_gateway)["workers"]]


async def _token(gateway: RunningGateway, name: str) -> str:
    return (await create_worker_token(gateway.settings, name)).token
