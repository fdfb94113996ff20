"""The registry of connected workers and the choice of one for a request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from infermesh.errors import NoWorkerAvailable
from infermesh.mesh.worker import Worker

NO_WORKER_RETRY_AFTER = 5.0


class WorkerRegistry:
    """Workers by node id, with the number of jobs each has in flight."""

    def __init__(self) -> None:
        self._workers: dict[str, Worker] = {}
        self._in_flight: dict[str, int] = {}

    def add(self, worker: Worker) -> None:
        self._workers[worker.node_id] = worker
        self._in_flight.setdefault(worker.node_id, 0)

    def remove(self, node_id: str) -> None:
        self._workers.pop(node_id, None)
        self._in_flight.pop(node_id, None)

    def workers(self) -> list[Worker]:
        return list(self._workers.values())

    def is_available(self, model: str) -> bool:
        return any(worker.serves(model) for worker in self._workers.values())

    def in_flight(self, node_id: str) -> int:
        return self._in_flight.get(node_id, 0)

    @asynccontextmanager
    async def lease(self, model: str) -> AsyncIterator[Worker]:
        """Pick the worker with the least work in flight for ``model`` and hold it."""
        worker = self._pick(model)
        node_id = worker.node_id
        self._in_flight[node_id] = self._in_flight.get(node_id, 0) + 1
        try:
            yield worker
        finally:
            if node_id in self._in_flight:
                self._in_flight[node_id] -= 1

    def _pick(self, model: str) -> Worker:
        candidates = [worker for worker in self._workers.values() if worker.serves(model)]
        if not candidates:
            raise NoWorkerAvailable(
                f"No worker is serving the model '{model}' right now. Try again later.",
                retry_after=NO_WORKER_RETRY_AFTER,
            )
        return min(candidates, key=lambda worker: self._in_flight.get(worker.node_id, 0))
