"""Failover and saturation with real worker processes on real WebSockets.

A worker SIGKILLed under load loses no request; one killed mid-stream ends the stream
with an error event and [DONE]; a saturated model makes requests wait a bounded time,
then answers 503 with Retry-After.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from infermesh.catalog.spec import ModelSpec
from tests.fakes.engine import run_engine
from tests.mesh.helpers import (
    HEARTBEAT,
    WorkerProcess,
    health,
    openai_worker,
    run_worker,
    worker_token,
)
from tests.support.gateway import RunningGateway, start_gateway, wait_until_available
from tests.support.waiting import wait_until

MODEL = "shared"


@contextmanager
def mesh(
    tmp_path: Path, *, workers: int, chunk_delay: float, concurrency: int = 4, **settings: object
) -> Iterator[tuple[RunningGateway, list[WorkerProcess]]]:
    """A gateway with ``workers`` registered worker processes serving ``MODEL`` on a
    scripted engine that takes ``chunk_delay`` seconds per token."""
    with ExitStack() as stack:
        engine = stack.enter_context(run_engine(models=["scripted-1"], chunk_delay=chunk_delay))
        gateway = stack.enter_context(
            start_gateway(
                tmp_path / "gateway",
                specs=[ModelSpec(id=MODEL, tier="fast")],
                embedded_worker=False,
                **{**HEARTBEAT, **settings},
            )
        )
        running = [
            stack.enter_context(
                run_worker(
                    gateway,
                    *openai_worker(engine, MODEL, concurrency=concurrency),
                    token=worker_token(gateway, f"w{index}"),
                    data_dir=tmp_path / f"w{index}",
                    registered=False,
                )
            )
            for index in range(workers)
        ]
        for worker in running:  # they start together; each must register
            assert worker.node_id
        wait_until_available(gateway.base_url, [MODEL])
        yield gateway, running


def in_flight(gateway: RunningGateway, node_id: str) -> int:
    count: int = gateway.app.state.services.registry.in_flight(node_id)
    return count


def ask(gateway: RunningGateway, index: int) -> str:
    response = gateway.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"request {index} " + "w " * 12}]
    )
    assert response.choices[0].message.content == f"echo: request {index} " + " ".join(["w"] * 12)
    assert response.metadata is not None
    return response.metadata["node_id"]


def test_sigkill_under_load_loses_no_request(tmp_path: Path) -> None:
    # A killed worker's socket closes at once, so no heartbeat is needed to notice it; a
    # slow heartbeat keeps the survivor from being dropped when the machine stalls.
    slow_heartbeat = {"heartbeat_interval": 1.0, "heartbeat_misses": 5}
    with mesh(tmp_path, workers=2, chunk_delay=0.05, **slow_heartbeat) as (gateway, workers):
        victim = workers[0]
        victim_node = victim.node_id
        with ThreadPoolExecutor(max_workers=12) as pool:
            futures = [pool.submit(ask, gateway, index) for index in range(24)]
            wait_until(lambda: in_flight(gateway, victim_node) > 0, what="the victim has work")
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
            workers,
        ),
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        long_request = pool.submit(ask, gateway, 0)  # ~1.5 s on the only slot
        node_id = workers[0].node_id
        wait_until(lambda: in_flight(gateway, node_id) > 0, what="the slot is taken")
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
        wait_until(lambda: not health(gateway)["workers"], what="the worker has left")
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
