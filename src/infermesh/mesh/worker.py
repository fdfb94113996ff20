"""The one interface the gateway uses to reach a worker (in-process or remote)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from infermesh.protocol.generation import GenerationChunk, GenerationJob


class Worker(Protocol):
    """Something that runs generation jobs for a set of catalog models."""

    @property
    def node_id(self) -> str:
        """Stable id of this worker, reported to clients as ``metadata.node_id``."""
        ...

    def serves(self, model: str) -> bool:
        """True while this worker can take a job for ``model`` now."""
        ...

    def generate(self, job: GenerationJob) -> AsyncIterator[GenerationChunk]:
        """Run ``job``; closing the iterator early cancels it on the engine."""
        ...
