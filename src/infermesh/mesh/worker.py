"""The one interface the gateway uses to reach a worker (in-process or remote)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from infermesh.protocol.generation import GenerationChunk, WorkerJob


@dataclass(frozen=True, slots=True)
class Operator:
    """The registered worker behind a connection and the account its earnings go to."""

    worker_id: str
    account_id: int


MAX_BYTES_PER_TOKEN = 32
"""More UTF-8 bytes per token than any real tokenizer averages over a whole answer."""
OUTPUT_SLACK_BYTES = 4096
OUTPUT_SLACK_CHUNKS = 256


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class JobTerms:
    """What the gateway allows one job, and whom to tell when the worker is done with it.

    A worker that streams more than ``max_output_bytes`` of text or ``max_chunks``
    chunks for a job of at most ``max_output_tokens`` tokens is flooding: the job fails
    and the worker is penalised. An embedding job has no output tokens but
    ``vectors`` vectors of ``vector_chars`` characters (base64) in all, in at most as many
    chunks. ``on_end`` is called once, as soon as
    the worker has finished the job (or failed it, or was lost), before the client has
    read it all.
    """

    max_output_tokens: int
    on_end: Callable[[], None] = _nothing
    vector_chars: int = 0
    vectors: int = 0

    @property
    def max_output_bytes(self) -> int:
        return self.max_output_tokens * MAX_BYTES_PER_TOKEN + self.vector_chars + OUTPUT_SLACK_BYTES

    @property
    def max_chunks(self) -> int:
        return self.max_output_tokens * 2 + self.vectors + OUTPUT_SLACK_CHUNKS


def text_bytes(chunk: GenerationChunk) -> int:
    """UTF-8 bytes of the text a chunk carries: content, tool-call names and arguments.
    What a job's output is measured by (its caps here, its usage bounds at the gateway)."""
    size = len(chunk.content.encode()) if chunk.content else 0
    for delta in chunk.tool_calls or ():
        function = delta.function
        if function is not None:
            size += len((function.name or "").encode()) + len((function.arguments or "").encode())
    return size


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

    def generate(self, job: WorkerJob, terms: JobTerms) -> AsyncIterator[GenerationChunk]:
        """Run ``job`` within ``terms``; closing the iterator early cancels it."""
        ...

    def penalize(self, reason: str) -> None:
        """The gateway caught the worker breaking the protocol in a way only it could
        see (e.g. usage beyond what was relayed); repeat offenders are disconnected."""
        ...
