"""The service that runs requests on the mesh (see :mod:`.run`) and shapes their
answers: chat completions, and embeddings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from infermesh.accounts.records import Principal
from infermesh.billing.service import BillingService, Charge, billed_usage
from infermesh.catalog.catalog import Catalog
from infermesh.chat.counting import TokenCounters
from infermesh.chat.generation import Deadlines
from infermesh.chat.run import ChatRun, RunContext, RunResult
from infermesh.errors import InfermeshError
from infermesh.limits.service import RateLimiter
from infermesh.mesh.registry import WorkerRegistry
from infermesh.protocol.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionUsage,
)
from infermesh.protocol.chat import ChoiceDelta as Delta
from infermesh.protocol.embeddings import EmbeddingRequest
from infermesh.protocol.errors import ErrorBody
from infermesh.telemetry import RequestRecord, where_it_failed

logger = logging.getLogger(__name__)

DEFAULT_DEADLINES = Deadlines(first_token=120.0, between_chunks=60.0, total=900.0)


@dataclass(frozen=True, slots=True)
class Completed:
    """A whole completion, charged, and what its run tells the client besides."""

    completion: ChatCompletion
    result: RunResult


@dataclass(frozen=True, slots=True)
class Embedded:
    """The vectors of an embedding request (base64 of float32, in input order), charged."""

    vectors: list[str]
    decoded: list[bytes]
    """The same vectors as float32 values."""
    model: str
    usage: CompletionUsage
    result: RunResult


class ChatService:
    """Runs chat completions and embeddings on the mesh, failing over between workers,
    and bills them."""

    def __init__(
        self,
        catalog: Catalog,
        registry: WorkerRegistry,
        billing: BillingService,
        *,
        max_image_bytes: int,
        max_attempts: int = 3,
        limits: RateLimiter | None = None,
        counters: TokenCounters | None = None,
        deadlines: Deadlines = DEFAULT_DEADLINES,
    ) -> None:
        self._context = RunContext(
            catalog=catalog,
            registry=registry,
            billing=billing,
            limits=limits,
            counters=counters or TokenCounters(models_dir=None),
            deadlines=deadlines,
            max_image_bytes=max_image_bytes,
            max_attempts=max_attempts,
        )

    def run(
        self,
        request: ChatCompletionRequest | EmbeddingRequest,
        record: RequestRecord,
        principal: Principal,
        *,
        prepaid: Charge | None = None,
        endpoint: str = "chat.completions",
    ) -> ChatRun:
        """A run of ``request``, not opened yet (``prepaid``, ``endpoint``: see
        :class:`ChatRun`)."""
        return ChatRun(
            self._context, request, record, principal, prepaid=prepaid, endpoint=endpoint
        )

    @property
    def context(self) -> RunContext:
        """What the runs of this service share (the catalog, billing, limits)."""
        return self._context

    async def complete(
        self,
        request: ChatCompletionRequest,
        record: RequestRecord,
        principal: Principal,
        *,
        endpoint: str = "chat.completions",
    ) -> Completed:
        """A whole (non-streamed) completion, charged."""
        async with self.run(request, record, principal, endpoint=endpoint) as run:
            await run.complete()
        return self.completed(run)

    async def embed(
        self, request: EmbeddingRequest, record: RequestRecord, principal: Principal
    ) -> Embedded:
        """The vectors of an embedding request, charged."""
        async with self.run(request, record, principal, endpoint="embeddings") as run:
            await run.complete()
        generation, result = run.generation, run.result
        assert generation is not None and generation.vectors is not None and result is not None
        usage = billed_usage(result.usage, result.cost)
        vectors = generation.vectors
        model = generation.identity.model
        return Embedded(vectors.encoded(), vectors.decoded(), model, usage, result)

    @staticmethod
    def completed(run: ChatRun) -> Completed:
        """The ``chat.completion`` of a run that completed and was closed."""
        generation, result = run.generation, run.result
        assert generation is not None and result is not None
        usage = billed_usage(result.usage, result.cost)
        return Completed(generation.identity.completion(generation.builder, usage), result)

    async def start(
        self,
        request: ChatCompletionRequest,
        record: RequestRecord,
        principal: Principal,
        *,
        endpoint: str = "chat.completions",
    ) -> ChatRun:
        """An opened run whose worker has sent its first chunk. Everything that goes
        wrong before that raises here (settled, nothing charged), so the caller can
        still answer with a proper HTTP status; the caller must close the run."""
        run = self.run(request, record, principal, endpoint=endpoint)
        await run.open()
        try:
            await run.dispatch()
        except BaseException as exc:
            await run.close(exc)
            raise
        return run

    async def chunks(
        self, run: ChatRun, *, include_usage: bool
    ) -> AsyncIterator[str | ChatCompletionChunk | ErrorBody]:
        """The ``chat.completion.chunk`` objects of a started run; an error midway ends
        it with an error body. A chunk that is only text comes as that text (a ``str``):
        most chunks are, and the caller frames them without building a model each."""
        generation = run.generation
        assert generation is not None
        identity = generation.identity
        try:
            yield identity.chunk(Delta(role="assistant", content=""))
            async for chunk in generation:
                if chunk.tool_calls:
                    yield identity.chunk(Delta(content=chunk.content, tool_calls=chunk.tool_calls))
                elif chunk.content:
                    yield chunk.content
            finish = generation.builder.finish_reason or "stop"
            yield identity.chunk(Delta(), finish_reason=finish)
            if include_usage:
                usage = run.usage()
                cost = run.charge.cost(usage) if run.charge is not None else 0
                yield identity.chunk(None, usage=billed_usage(usage, cost))
        except InfermeshError as exc:
            yield ErrorBody(message=exc.message, type=exc.error_type, code=exc.code)
        except Exception as exc:  # logged without its message: it may quote the answer
            logger.error("stream %s failed: %s", identity.completion_id, where_it_failed(exc))
            yield ErrorBody(
                message="The stream failed on the server.",
                type="server_error",
                code="stream_failed",
            )
        # Settled before the stream's end: a client that has read it all and then asks
        # for its balance sees this request in it.
        await run.close()
