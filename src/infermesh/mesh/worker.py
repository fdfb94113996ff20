"""The one interface the gateway uses to reach a worker (in-process or remote)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from infermesh.protocol.generation import GenerationChunk, GenerationJob


class Worker(Protocol):
    """Something that runs generation jobs for a set of catalog models.

    ``generate`` raises :class:`infermesh.errors.WorkerLost` when the worker went away
    (the job may be retried elsewhere), :class:`infermesh.errors.BackendError` when its
    engine failed, and :class:`infermesh.errors.InvalidRequest` (or a subclass) when the
    engine refused the request itself (retrying elsewhere would not help).
    """

    @property
    def node_id(self) -> str:
        """Stable id of this worker, reported to clients as ``metadata.node_id``."""
        ...

    def serves(self, model: str) -> bool:
        """True while this worker takes jobs for ``model`` (connected, not draining)."""
        ...

    def capacity(self, model: str) -> int:
        """How many jobs for ``model`` this worker runs at once."""
        ...

    def generate(self, job: GenerationJob) -> AsyncIterator[GenerationChunk]:
        """Run ``job``; closing the iterator early cancels it on the engine."""
        ...
