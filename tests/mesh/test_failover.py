"""Failover and saturation with real worker processes on real WebSockets.

A worker SIGKILLed under load loses no request; one killed mid-stream ends the stream
with an error event and [DONE]; a saturated model makes requests wait a bounded time,
then answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infermesh.accounts.workers import WorkerTokenService
from infermesh.catalog.spec import ModelSpec
from infermesh.store.database import Database
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.support.gateway import RunningGateway, start_gateway, wait_until_available
from tests.support.processes import RunningProcess, infermesh_command

MODEL = "shared"


async def _worker_token(gateway: RunningGateway, name: str) -> tuple[str, str]:
    database = Database.from_settings(gateway.settings)
    try:
        created = await WorkerTokenService(database).create(name)
    finally:
        await database.dispose()
    return created.token, created.record.id


@dataclass
class WorkerProcess:
    """An ``infermesh worker`` process and the id of its worker token (its node id)."""

    worker_id: str
    process: RunningProcess


@contextmanager
def worker_process(
    gateway: RunningGateway, engine: ScriptedEngine, name: str, *, concurrency: int = 4
) -> Iterator[WorkerProcess]:
    token, worker_id = asyncio.run(_worker_token(gateway, name))
    process = RunningProcess(
        infermesh_command(
            "worker", "--gateway", gateway.base_url, "--token", token, "--name", name,
            "--backend", "openai", "--upstream-url", engine.base_url,
            "--serve", f"{MODEL}=scripted-1", "--concurrency", str(concurrency),
        )
    )  # fmt: skip
    try:
        yield WorkerProcess(worker_id, process)
    finally:
        process.stop()


def node_ids(gateway: RunningGateway) -> list[str]:
    with gateway.http() as http:
        return [worker["node_id"] for worker in http.get("/health").json()["workers"]]


def wait_for_workers(gateway: RunningGateway, count: int, *, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(nodes := node_ids(gateway)) < count:
        assert time.monotonic() < deadline, f"only {nodes} registered"
        time.sleep(0.05)
    return nodes


@contextmanager
def mesh(
    tmp_path: Path, *, workers: int, chunk_delay: float, concurrency: int = 4, **settings: object
) -> Iterator[tuple[RunningGateway, list[WorkerProcess]]]:
    with ExitStack() as stack:
        engine = stack.enter_context(run_engine(models=["scripted-1"], chunk_delay=chunk_delay))
        gateway = stack.enter_context(
            start_gateway(
                tmp_path,
                specs=[ModelSpec(id=MODEL, tier="fast")],
                embedded_worker=False,
                heartbeat_interval=0.2,
                heartbeat_misses=3,
                **settings,
            )
        )
        processes = [
            stack.enter_context(
                worker_process(gateway, engine, f"w{index}", concurrency=concurrency)
            )
            for index in range(workers)
        ]
        wait_for_workers(gateway, workers)
        wait_until_available(gateway.base_url, [MODEL])
        yield gateway, processes


def ask(gateway: RunningGateway, index: int) -> str:
    response = gateway.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"request {index} " + "w " * 12}]
    )
    assert response.choices[0].message.content == f"echo: request {index} " + " ".join(["w"] * 12)
    assert response.metadata is not None
    return response.metadata["node_id"]


def test_sigkill_under_load_loses_no_request(tmp_path: Path) -> None:
    with mesh(tmp_path, workers=2, chunk_delay=0.05) as (gateway, workers):
        victim_node = node_ids(gateway)[0]
        with ThreadPoolExecutor(max_workers=12) as pool:
            futures = [pool.submit(ask, gateway, index) for index in range(24)]
            deadline = time.monotonic() + 30
            while gateway.app.state.services.registry.in_flight(victim_node) == 0:
                assert time.monotonic() < deadline, "the victim never got work"
                time.sleep(0.01)
            victim = next(w for w in workers if victim_node.startswith(w.worker_id))
            victim.process.process.send_signal(signal.SIGKILL)
            served = Counter(future.result(timeout=120) for future in futures)
        assert sum(served.values()) == 24
        survivors = [node for node in served if node != victim_node]
        assert survivors, served


def test_worker_killed_mid_stream_ends_the_stream_with_an_error_event(tmp_path: Path) -> None:
    with mesh(tmp_path, workers=1, chunk_delay=0.05) as (gateway, [worker]), gateway.http() as http:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "x " * 200}],
            "stream": True,
        }
        events: list[str] = []
        with http.stream(
            "POST", "/v1/chat/completions", json=body, headers=gateway.auth()
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                events.append(line.removeprefix("data: "))
                if len(events) == 3:
                    worker.process.process.send_signal(signal.SIGKILL)
        assert events[-1] == "[DONE]"
        assert '"error"' in events[-2]
        assert "worker_lost" in events[-2]


def test_saturation_waits_a_bounded_time_then_503(tmp_path: Path) -> None:
    with (
        mesh(tmp_path, workers=1, chunk_delay=0.1, concurrency=1, queue_timeout=0.5) as (
            gateway,
            _,
        ),
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        long_request = pool.submit(ask, gateway, 0)  # ~1.5 s on the only slot
        registry = gateway.app.state.services.registry
        deadline = time.monotonic() + 30
        while registry.in_flight(node_ids(gateway)[0]) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with gateway.http() as http:
            response = http.post(
                "/v1/chat/completions",
                headers=gateway.auth(),
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "workers_busy"
        assert int(response.headers["retry-after"]) >= 1
        long_request.result(timeout=60)


def test_a_queued_request_gets_the_slot_when_it_frees(tmp_path: Path) -> None:
    with mesh(tmp_path, workers=1, chunk_delay=0.02, concurrency=1, queue_timeout=30) as (
        gateway,
        _,
    ):
        with ThreadPoolExecutor(max_workers=4) as pool:
            served = list(pool.map(lambda index: ask(gateway, index), range(4)))
        assert len(served) == 4


def test_no_worker_is_503_with_retry_after(tmp_path: Path) -> None:
    with mesh(tmp_path, workers=1, chunk_delay=0.0) as (gateway, [worker]):
        worker.process.stop()
        deadline = time.monotonic() + 30
        while node_ids(gateway):
            assert time.monotonic() < deadline, "the stopped worker stayed registered"
            time.sleep(0.05)
        with httpx.Client(base_url=gateway.base_url) as http:
            response = http.post(
                "/v1/chat/completions",
                headers=gateway.auth(),
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            )
            models = http.get("/v1/models").json()["data"]
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_worker_available"
        assert int(response.headers["retry-after"]) >= 1
        assert models[0]["available"] is False


pytestmark = pytest.mark.timeout(180)
