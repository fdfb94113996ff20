"""The one interface the gateway uses to reach a worker (in-process or remote)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from infermesh.protocol.generation import GenerationChunk, GenerationJob


@dataclass(frozen=True, slots=True)
class Operator:
    """The registered worker behind a connection and the account its earnings go to."""

    worker_id: str
    account_id: int


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

    @property
    def operator(self) -> Operator | None:
        """Whose worker this is, to credit with earnings; None for the gateway's own."""
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
