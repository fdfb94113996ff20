"""Slots, the bounded fair wait and failover, with real in-process workers on a real engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from infermesh.catalog.spec import ModelSpec, ServeSpec
from infermesh.errors import NoWorkerAvailable
from infermesh.mesh.local import InProcessWorker
from infermesh.mesh.registry import WorkerRegistry
from infermesh.mesh.worker import JobTerms
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.generation import GenerationJob
from infermesh.worker.host import HostOptions, ModelHost
from tests.fakes.engine import ScriptedEngine, run_engine


@pytest.fixture(scope="module")
def slow_engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"], chunk_delay=0.02) as engine:
        yield engine


@pytest.fixture
async def hosts(slow_engine: ScriptedEngine, tmp_path: Path) -> AsyncIterator[list[ModelHost]]:
    spec = ModelSpec(
        id="m",
        serve=ServeSpec(
            backend="openai", engine_model="scripted-1", upstream_url=slow_engine.base_url
        ),
    )
    started = [ModelHost([spec], HostOptions(models_dir=tmp_path)) for _ in range(2)]
    for host in started:
        await host.start()
    yield started
    for host in started:
        await host.close()


def job(text: str = "a b c d e f g h") -> GenerationJob:
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": text}]}
    )
    return GenerationJob(id="job", model="m", request=request)


async def run_lease(registry: WorkerRegistry, **acquire: object) -> str:
    lease = await registry.acquire("m", **acquire)  # type: ignore[arg-type]
    try:
        async for chunk in lease.worker.generate(job(), JobTerms(64, on_end=lease.end_slot)):
            lease.first_token()
            if chunk.finish_reason:
                lease.succeeded(chunk.usage.completion_tokens if chunk.usage else 0)
    finally:
        lease.release()
    return lease.worker.node_id


async def test_no_worker_at_all_fails_at_once() -> None:
    registry = WorkerRegistry(queue_timeout=30)
    with pytest.raises(NoWorkerAvailable) as caught:
        await asyncio.wait_for(registry.acquire("m"), timeout=5)
    assert caught.value.retry_after and caught.value.code == "no_worker_available"


async def test_slots_are_capped_and_the_overflow_waits_then_gets_503(
    hosts: list[ModelHost],
) -> None:
    registry = WorkerRegistry(queue_timeout=0.3)
    registry.add(InProcessWorker(hosts[0], node_id="a", capacity=1))
    registry.add(InProcessWorker(hosts[1], node_id="b", capacity=1))
    first = await registry.acquire("m")
    second = await registry.acquire("m")
    assert {first.worker.node_id, second.worker.node_id} == {"a", "b"}
    with pytest.raises(NoWorkerAvailable) as caught:
        await registry.acquire("m")
    assert caught.value.code == "workers_busy"
    assert caught.value.retry_after
    assert registry.waiting() == 0
    first.release()
    third = await registry.acquire("m")
    assert third.worker.node_id == first.worker.node_id
    second.release()
    third.release()
    assert registry.in_flight("a") == registry.in_flight("b") == 0


async def test_waiters_are_served_in_arrival_order(hosts: list[ModelHost]) -> None:
    registry = WorkerRegistry(queue_timeout=30)
    registry.add(InProcessWorker(hosts[0], node_id="a", capacity=1))
    held = await registry.acquire("m")
    order: list[int] = []

    async def wait_in_line(position: int) -> None:
        lease = await registry.acquire("m")
        order.append(position)
        lease.release()

    tasks = []
    for position in range(5):
        tasks.append(asyncio.create_task(wait_in_line(position)))
        await asyncio.sleep(0)  # one turn of the loop: the task queues itself at once
        assert registry.waiting() == position + 1
    held.release()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert order == [0, 1, 2, 3, 4]


async def test_a_waiter_that_gives_up_leaves_no_slot_behind(hosts: list[ModelHost]) -> None:
    """Clients with short timeouts cancel their wait; a lease handed to a cancelled
    waiter must come back, or the model answers workers_busy for ever."""
    registry = WorkerRegistry(queue_timeout=30)
    registry.add(InProcessWorker(hosts[0], node_id="a", capacity=1))
    held = await registry.acquire("m")
    waiters = [asyncio.create_task(registry.acquire("m")) for _ in range(3)]
    await asyncio.sleep(0)
    assert registry.waiting() == 3
    for waiter in waiters:
        waiter.cancel()
    held.release()  # wakes the queue while the cancellations are being delivered
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    assert registry.waiting() == 0
    assert registry.in_flight("a") == 0
    lease = await asyncio.wait_for(registry.acquire("m"), timeout=5)
    assert lease.worker.node_id == "a"
    lease.release()
    assert registry.in_flight() == 0


async def test_a_slot_ends_when_the_worker_is_done_not_when_the_client_has_read(
    hosts: list[ModelHost],
) -> None:
    registry = WorkerRegistry(queue_timeout=30)
    registry.add(InProcessWorker(hosts[0], node_id="a", capacity=1))
    lease = await registry.acquire("m")
    lease.end_slot()
    assert registry.in_flight("a") == 0
    second = await asyncio.wait_for(registry.acquire("m"), timeout=5)
    lease.release()  # recording the first job's outcome frees nothing twice
    assert registry.in_flight("a") == 1
    second.release()
    assert registry.in_flight("a") == 0


async def test_waiters_fail_fast_when_the_last_worker_leaves(hosts: list[ModelHost]) -> None:
    registry = WorkerRegistry(queue_timeout=30)
    registry.add(InProcessWorker(hosts[0], node_id="a", capacity=1))
    held = await registry.acquire("m")
    waiting = asyncio.create_task(registry.acquire("m"))
    await asyncio.sleep(0)
    assert registry.waiting() == 1
    registry.remove("a")
    with pytest.raises(NoWorkerAvailable):
        await asyncio.wait_for(waiting, timeout=5)
    held.release()


async def test_concurrent_jobs_spread_over_workers_and_are_measured(hosts: list[ModelHost]) -> None:
    registry = WorkerRegistry(queue_timeout=30)
    registry.add(InProcessWorker(hosts[0], node_id="a", capacity=2))
    registry.add(InProcessWorker(hosts[1], node_id="b", capacity=2))
    served = await asyncio.gather(*(run_lease(registry) for _ in range(8)))
    assert set(served) == {"a", "b"}
    for node in ("a", "b"):
        stats = registry.stats(node)
        assert stats.jobs >= 1 and stats.failures == 0
        assert stats.tokens_per_second and stats.time_to_first_token is not None
    assert registry.in_flight("a") == registry.in_flight("b") == 0


async def test_excluded_workers_are_not_chosen(hosts: list[ModelHost]) -> None:
    registry = WorkerRegistry(queue_timeout=1)
    registry.add(InProcessWorker(hosts[0], node_id="a"))
    registry.add(InProcessWorker(hosts[1], node_id="b"))
    assert all([await run_lease(registry, exclude={"a"}) == "b" for _ in range(5)])
    with pytest.raises(NoWorkerAvailable):
        await registry.acquire("m", exclude={"a", "b"})
