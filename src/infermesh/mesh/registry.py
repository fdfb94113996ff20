"""The registry of connected workers: free slots, a fair bounded wait, and leases.

A job holds a :class:`Lease` on one slot of one worker from dispatch to its end.
When every worker serving a model is full, requests wait in a FIFO queue for a slot,
for at most ``queue_timeout`` seconds, then get a 503 with ``Retry-After``. When no
worker serves the model at all, the 503 comes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TypeVar

from infermesh.errors import NoWorkerAvailable
from infermesh.mesh.policy import Candidate, PowerOfTwoChoices, RoutingPolicy
from infermesh.mesh.stats import WorkerStats
from infermesh.mesh.worker import Worker

K = TypeVar("K")

NO_WORKER_RETRY_AFTER = 5.0
BUSY_RETRY_AFTER = 2.0


@dataclass
class Lease:
    """One job's hold on a worker slot; measures the job for the router.

    The slot is freed as soon as the worker is done with the job (:meth:`end_slot`,
    which may come before the client has read the whole answer); :meth:`release`
    frees it if that has not happened yet and records what the job showed of the worker.
    """

    worker: Worker
    model: str
    registry: WorkerRegistry
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    ended_at: float | None = None
    completion_tokens: int = 0
    outcome: str | None = None
    released: bool = False

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def succeeded(self, completion_tokens: int) -> None:
        self.outcome, self.completion_tokens = "ok", completion_tokens

    def failed(self) -> None:
        self.outcome = "failed"

    def end_slot(self) -> None:
        """The worker is done with the job: its slot goes to the next request (idempotent)."""
        if self.ended_at is None:
            self.ended_at = time.perf_counter()
            self.registry._free(self)

    def release(self) -> None:
        """Free the slot if still held and record the job's outcome (idempotent)."""
        if self.released:
            return
        self.released = True
        self.end_slot()
        self.registry._record(self)


@dataclass
class _Waiter:
    model: str
    exclude: Collection[str]
    future: asyncio.Future[Lease]


class WorkerRegistry:
    """Workers by node id, their slots in use per model, and the requests waiting."""

    def __init__(self, *, queue_timeout: float = 5.0, policy: RoutingPolicy | None = None) -> None:
        self.queue_timeout = queue_timeout
        self._policy = policy or PowerOfTwoChoices()
        self._workers: dict[str, Worker] = {}
        self._busy: dict[tuple[str, str], int] = {}
        self._in_flight: dict[str, int] = {}
        self._stats: dict[str, WorkerStats] = {}
        self._waiters: deque[_Waiter] = deque()

    def add(self, worker: Worker) -> None:
        self._workers[worker.node_id] = worker
        self._stats.setdefault(worker.node_id, WorkerStats())
        self.wake()

    def remove(self, node_id: str) -> None:
        self._workers.pop(node_id, None)
        self.wake()

    def workers(self) -> list[Worker]:
        return list(self._workers.values())

    def stats(self, node_id: str) -> WorkerStats:
        return self._stats.setdefault(node_id, WorkerStats())

    def is_available(self, model: str) -> bool:
        return any(worker.serves(model) for worker in self._workers.values())

    def in_flight(self, node_id: str | None = None) -> int:
        """Slots in use on ``node_id`` (on every worker if None)."""
        if node_id is None:
            return sum(self._in_flight.values())
        return self._in_flight.get(node_id, 0)

    def waiting(self, model: str | None = None) -> int:
        return sum(1 for waiter in self._waiters if model is None or waiter.model == model)

    async def acquire(self, model: str, *, exclude: Collection[str] = ()) -> Lease:
        """A slot on a worker for ``model`` (not one in ``exclude``), waiting if all are busy.

        A caller that is cancelled while it waits leaves the queue, and a lease handed to
        it in the meantime is given back: nobody else would release it.
        """
        if not self._serving(model, exclude):
            raise _no_worker(model)
        waiter = _Waiter(model, exclude, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self.wake()
        try:
            if not waiter.future.done():
                await asyncio.wait({waiter.future}, timeout=self.queue_timeout)
        except BaseException:
            self._abandon(waiter)
            raise
        if waiter.future.done() and not waiter.future.cancelled():
            return waiter.future.result()  # a lease, or the error set by wake()
        self._abandon(waiter)
        raise NoWorkerAvailable(
            f"Every worker serving '{model}' is busy. Try again shortly.",
            code="workers_busy",
            retry_after=BUSY_RETRY_AFTER,
        )

    def wake(self) -> None:
        """Hand free slots to waiters in arrival order; fail those nobody can serve any more."""
        if not self._waiters:
            return
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            if not self._serving(waiter.model, waiter.exclude):
                self._waiters.remove(waiter)
                waiter.future.set_exception(_no_worker(waiter.model))
                continue
            candidates = self._candidates(waiter.model, waiter.exclude)
            if not candidates:
                continue  # stays first in line for this model; later waiters may differ
            chosen = self._workers[self._policy.choose(candidates).node_id]
            self._waiters.remove(waiter)
            waiter.future.set_result(self._lease(chosen, waiter.model))

    def _abandon(self, waiter: _Waiter) -> None:
        """Take a waiter that gave up out of the queue; give back a lease it was handed."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        future = waiter.future
        if not future.done():
            future.cancel()
        elif not future.cancelled() and future.exception() is None:
            future.result().release()

    def _serving(self, model: str, exclude: Collection[str]) -> bool:
        return any(
            worker.serves(model)
            for node_id, worker in self._workers.items()
            if node_id not in exclude
        )

    def _candidates(self, model: str, exclude: Collection[str]) -> list[Candidate]:
        return [
            Candidate(
                node_id,
                max(self._in_flight.get(node_id, 0), getattr(worker, "reported_load", 0)),
                self.stats(node_id),
                remote=getattr(worker, "gateway_id", None) is not None,
            )
            for node_id, worker in self._workers.items()
            if node_id not in exclude
            and worker.serves(model)
            and self._busy.get((node_id, model), 0) < worker.capacity(model)
        ]

    def _lease(self, worker: Worker, model: str) -> Lease:
        key = (worker.node_id, model)
        self._busy[key] = self._busy.get(key, 0) + 1
        self._in_flight[worker.node_id] = self._in_flight.get(worker.node_id, 0) + 1
        return Lease(worker=worker, model=model, registry=self)

    def _free(self, lease: Lease) -> None:
        node_id = lease.worker.node_id
        _decrement(self._busy, (node_id, lease.model))
        _decrement(self._in_flight, node_id)
        self.wake()

    def _record(self, lease: Lease) -> None:
        stats = self.stats(lease.worker.node_id)
        if lease.outcome == "ok":
            ttft = None if lease.first_token_at is None else lease.first_token_at - lease.started
            ended = lease.ended_at or time.perf_counter()
            seconds = ended - (lease.first_token_at or lease.started)
            stats.record_success(
                time_to_first_token=ttft, tokens=lease.completion_tokens, seconds=seconds
            )
        elif lease.outcome == "failed":
            stats.record_failure()


def _decrement(counts: dict[K, int], key: K) -> None:
    remaining = counts.get(key, 0) - 1
    if remaining > 0:
        counts[key] = remaining
    else:
        counts.pop(key, None)


def _no_worker(model: str) -> NoWorkerAvailable:
    return NoWorkerAvailable(
        f"No worker is serving the model '{model}' right now. Try again later.",
        retry_after=NO_WORKER_RETRY_AFTER,
    )
