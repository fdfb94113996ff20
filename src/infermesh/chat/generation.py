"""A job running on a worker, as a chat request reads it: chunks within deadlines.

A :class:`Generation` starts once the worker has sent the job's first chunk. Reading it
yields the rest, each within the inter-chunk deadline and the whole within the
request's deadline; a worker that misses one fails with
:class:`~infermesh.errors.WorkerTimeout` and is counted against in routing. What was
relayed is kept (text size, tool calls), so that the worker's usage can be checked
against it. The vectors of an embedding job are checked as they come (see
:class:`~infermesh.chat.vectors.VectorAssembly`); a chat job's worker sends none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from infermesh.chat.assembly import CompletionBuilder, ResponseIdentity
from infermesh.chat.vectors import VectorAssembly
from infermesh.errors import InfermeshError, WorkerMisbehaved, WorkerTimeout
from infermesh.mesh.registry import Lease
from infermesh.mesh.worker import text_bytes
from infermesh.protocol.chat import Usage
from infermesh.protocol.generation import GenerationChunk

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT = 10.0
"""Seconds to wait for a worker's iterator to close (it sends a cancel frame)."""


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long a worker may take: to its first token, between two chunks, in all."""

    first_token: float
    between_chunks: float
    total: float


class Generation:
    """A job running on a worker: its first chunk has arrived, the rest are streaming."""

    def __init__(
        self,
        identity: ResponseIdentity,
        first: GenerationChunk,
        rest: AsyncIterator[GenerationChunk],
        lease: Lease,
        *,
        deadlines: Deadlines,
        ends_at: float,
        vectors: VectorAssembly | None = None,
    ) -> None:
        self.identity = identity
        self.vectors = vectors
        self.lease = lease
        self.builder = CompletionBuilder()
        self.claimed: Usage | None = None
        """The worker's last usage report: final if finished, progress if cut short."""
        self.error_code: str | None = None
        self.text_bytes = 0
        self._first: GenerationChunk | None = first
        self._rest = rest
        self._deadlines = deadlines
        self._ends_at = ends_at
        self._closed = False

    @property
    def finished(self) -> bool:
        return self.builder.finish_reason is not None

    async def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        try:
            if self._first is not None:
                first, self._first = self._first, None
                yield self._observe(first)
            while not self.finished:
                chunk = await self._next()
                if chunk is None:
                    return
                yield self._observe(chunk)
        except InfermeshError as exc:
            self.error_code = exc.code or "backend_error"
            if exc.status_code >= 500:
                self.lease.failed()
            raise

    async def aclose(self) -> None:
        """Stop the job if it still runs (the worker is sent a cancel); idempotent."""
        if not self._closed:
            self._closed = True
            await stop_job(self._rest, self.identity.node_id)

    async def _next(self) -> GenerationChunk | None:
        """The next chunk, or None at the end; raises WorkerTimeout past a deadline."""
        loop = asyncio.get_running_loop()
        left = self._ends_at - loop.time()
        timeout = min(self._deadlines.between_chunks, left)
        try:
            async with asyncio.timeout(max(timeout, 0)):
                return await anext(self._rest)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            which = "the request's deadline" if left <= timeout else "the inter-chunk deadline"
            raise WorkerTimeout(
                f"The worker stopped answering ({which} of {max(timeout, 0):.0f}s passed)."
            ) from None

    def _observe(self, chunk: GenerationChunk) -> GenerationChunk:
        if chunk.embeddings is not None or self.vectors is not None:
            self._check_vectors(chunk)
        self.builder.add(chunk)
        self.text_bytes += text_bytes(chunk)
        if chunk.progress is not None:
            self.claimed = chunk.progress
        if chunk.usage is not None:
            self.claimed = chunk.usage
        if chunk.finish_reason is not None:
            self.lease.end_slot()
        return chunk

    def _check_vectors(self, chunk: GenerationChunk) -> None:
        """Take the chunk's vectors (an embedding job's); a worker that sends a bad one,
        too few, or any for a chat job, or text for an embedding job, is penalised."""
        vectors = self.vectors
        try:
            if vectors is None or chunk.content or chunk.tool_calls:
                raise WorkerMisbehaved("The worker sent output of the wrong kind for the job.")
            if chunk.embeddings:
                vectors.add(chunk.embeddings)
            if chunk.finish_reason is not None:
                vectors.finish()
        except WorkerMisbehaved as exc:
            self.lease.worker.penalize(exc.message)
            raise


async def stop_job(chunks: AsyncIterator[GenerationChunk], node_id: str) -> None:
    """Close a job's iterator (the worker is told to stop), within a bounded time."""
    close = getattr(chunks, "aclose", None)
    if close is None:
        return
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await close()
    except Exception:
        logger.warning("closing a job on worker %s failed", node_id)
