"""The one interface between a worker and an inference engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from infermesh.protocol.embeddings import EmbeddingJob
from infermesh.protocol.generation import GenerationChunk, GenerationJob


class Backend(Protocol):
    """An inference engine that serves one or more engine models.

    ``generate`` and ``embed`` are async iterators of chunks; the last one carries
    ``finish_reason`` and ``usage``. Closing the iterator early (the client went away)
    must stop the engine's work on that job. Engine failures raise
    :class:`infermesh.errors.BackendError` (or :class:`infermesh.errors.UpstreamRejected`
    for a request the engine refused); a request the backend can tell is wrong raises
    :class:`infermesh.errors.InvalidRequest` (code ``context_length_exceeded`` for an
    input longer than the model's context).
    """

    async def start(self) -> None:
        """Load weights, open connections. Called once before the first job."""

    async def close(self) -> None:
        """Release everything; jobs still running are cancelled."""

    def generate(self, job: GenerationJob, engine_model: str) -> AsyncIterator[GenerationChunk]:
        """Run ``job`` on ``engine_model`` (the engine's own name or path for the model)."""
        ...

    def embed(self, job: EmbeddingJob, engine_model: str) -> AsyncIterator[GenerationChunk]:
        """Embed ``job``'s inputs on ``engine_model``: chunks whose ``embeddings`` hold
        every input's vector once (``job.dimensions`` long if set), then one
        with ``finish_reason`` ``"stop"`` and the input tokens read as ``prompt_tokens``."""
        ...
