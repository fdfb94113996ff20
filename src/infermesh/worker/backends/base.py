"""The one interface between a worker and an inference engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from infermesh.protocol.generation import GenerationChunk, GenerationJob


class Backend(Protocol):
    """An inference engine that serves one or more engine models.

    ``generate`` is an async iterator of chunks; the last one carries ``finish_reason``
    and ``usage``. Closing the iterator early (the client went away) must stop the
    engine's work on that job. Engine failures raise :class:`infermesh.errors.BackendError`
    (or :class:`infermesh.errors.UpstreamRejected` for a request the engine refused).
    """

    async def start(self) -> None:
        """Load weights, open connections. Called once before the first job."""

    async def close(self) -> None:
        """Release everything; jobs still running are cancelled."""

    def generate(self, job: GenerationJob, engine_model: str) -> AsyncIterator[GenerationChunk]:
        """Run ``job`` on ``engine_model`` (the engine's own name or path for the model)."""
        ...
