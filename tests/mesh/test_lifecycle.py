"""A worker's life on the network: cancellation reaches its engine, SIGTERM drains it,
a silent worker is declared dead, and a worker comes back by itself after its gateway
restarts."""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from openai.types.chat import ChatCompletion

from infermesh.config import Settings
from infermesh.gateway.app import create_app
from tests.fakes.engine import ScriptedEngine
from tests.mesh.helpers import (
    HEARTBEAT,
    capture_logs,
    health,
    mesh_specs,
    model_available,
    openai_worker,
    run_worker,
    worker_token,
)
from tests.support.gateway import RunningGateway, create_key
from tests.support.servers import free_port, serve_app
from tests.support.waiting import wait_until

LONG = " ".join(f"word{index}" for index in range(40))  # 41 tokens: 8 s on the slow engine


def test_a_client_that_leaves_cancels_the_job_on_the_engine(
    mesh_gateway: RunningGateway, slow_engine: ScriptedEngine, worker_dir: Path
) -> None:
    slow_engine.disconnected.clear()
    with run_worker(
        mesh_gateway, *openai_worker(slow_engine, "slow"), data_dir=worker_dir
    ) as worker:
        client = mesh_gateway.client()
        stream = client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": LONG}], stream=True
        )
        pieces = iter(stream)
        first = next(pieces)
        assert first.metadata == {"node_id": worker.node_id}
        next(pieces)
        stream.close()
        assert slow_engine.disconnected.wait(timeout=5), "the engine kept generating"
        worker.process.wait_for_line("cancelled")
        wait_until(lambda: _in_flight(mesh_gateway, worker.node_id) == 0, what="slot released")


def test_sigterm_drains_in_flight_jobs_then_exits_cleanly(
    mesh_gateway: RunningGateway, slow_engine: ScriptedEngine, worker_dir: Path
) -> None:
    requests_before = len(slow_engine.requests)
    options = openai_worker(slow_engine, "slow", concurrency=4)
    with run_worker(mesh_gateway, *options, data_dir=worker_dir) as worker:
        client = mesh_gateway.client()

        def ask(index: int) -> ChatCompletion:
            words = " ".join(f"w{index}-{n}" for n in range(6))
            return client.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": words}]
            )

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(ask, index) for index in range(4)]
            wait_until(lambda: len(slow_engine.requests) - requests_before == 4, what="4 jobs")
            worker.process.process.send_signal(signal.SIGTERM)
            worker.process.wait_for_line("draining")
            wait_until(lambda: not model_available(mesh_gateway, "slow"), what="draining")
            answers = [future.result(timeout=30) for future in futures]
        assert worker.wait_exit() == 0
    for index, answer in enumerate(answers):
        assert answer.choices[0].message.content == "echo: " + " ".join(
            f"w{index}-{n}" for n in range(6)
        )
        assert answer.metadata == {"node_id": worker.node_id}
    assert "stopped (drained)" in worker.process.output


def test_a_silent_worker_is_declared_dead_and_comes_back(
    mesh_gateway: RunningGateway, engine: ScriptedEngine, worker_dir: Path
) -> None:
    with run_worker(
        mesh_gateway, *openai_worker(engine, "scripted"), data_dir=worker_dir
    ) as worker:
        pid = worker.process.process.pid
        with capture_logs("infermesh.gateway") as logs:
            os.kill(pid, signal.SIGSTOP)
            try:
                misses = HEARTBEAT["heartbeat_misses"]
                logs.wait_for(f"no heartbeat for {misses} intervals", timeout=30)
                assert not model_available(mesh_gateway, "scripted")
            finally:
                os.kill(pid, signal.SIGCONT)
        worker.process.wait_for_line("reconnecting in")
        wait_until(lambda: model_available(mesh_gateway, "scripted"), what="back")
        response = mesh_gateway.client().chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "again"}]
        )
        assert response.metadata == {"node_id": worker.node_id}


def test_a_worker_reconnects_after_its_gateway_restarts(
    tmp_path: Path, engine: ScriptedEngine, worker_dir: Path
) -> None:
    settings = Settings(data_dir=tmp_path, embedded_worker=False, **HEARTBEAT)
    key = asyncio.run(create_key(settings))
    port = free_port()
    with ExitStack() as stack:
        with serve_app(create_app(settings, specs=mesh_specs()), port=port) as base_url:
            gateway = RunningGateway(base_url=base_url, key=key, settings=settings, app=None)
            token = worker_token(gateway, "comeback")
            options = openai_worker(engine, "scripted")
            worker = stack.enter_context(
                run_worker(gateway, *options, token=token, data_dir=worker_dir)
            )
        worker.process.wait_for_line("reconnecting in")
        with serve_app(create_app(settings, specs=mesh_specs()), port=port):
            wait_until(lambda: worker.process.output.count("registered as node") == 2)
            response = gateway.client().chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": "welcome back"}]
            )
            assert response.metadata == {"node_id": token.record.id}


def _in_flight(gateway: RunningGateway, node_id: str) -> int:
    workers = {entry["node_id"]: entry["in_flight"] for entry in health(gateway)["workers"]}
    return int(workers.get(node_id, 0))
