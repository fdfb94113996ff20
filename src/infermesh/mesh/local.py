"""The in-process worker: a model host in the gateway's own process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from infermesh.mesh.worker import JobTerms, Operator
from infermesh.protocol.generation import GenerationChunk, WorkerJob
from infermesh.worker.host import ModelHost

logger = logging.getLogger(__name__)


class InProcessWorker:
    """A :class:`~infermesh.mesh.worker.Worker` backed by a local :class:`ModelHost`."""

    def __init__(self, host: ModelHost, *, node_id: str = "local", capacity: int = 64) -> None:
        self._host = host
        self._node_id = node_id
        self._capacity = capacity

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def operator(self) -> Operator | None:
        return None  # the gateway's own worker: the whole charge stays with the house

    def serves(self, model: str) -> bool:
        return self._host.is_ready(model)

    def capacity(self, model: str) -> int:
        return self._capacity

    async def generate(self, job: WorkerJob, terms: JobTerms) -> AsyncIterator[GenerationChunk]:
        chunks = self._host.generate(job)
        try:
            async for chunk in chunks:
                if chunk.finish_reason is not None:
                    terms.on_end()
                yield chunk
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    def penalize(self, reason: str) -> None:
        logger.error("the in-process worker broke the protocol: %s", reason)
