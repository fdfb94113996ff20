"""The chat completion service: validate, dispatch to a worker, fail over, assemble."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator

from pydantic import BaseModel

from infermesh.catalog.catalog import Catalog
from infermesh.chat.assembly import SSE_DONE, CompletionBuilder, ResponseIdentity, sse_event
from infermesh.chat.validation import check_request
from infermesh.errors import BackendError, InfermeshError, NoWorkerAvailable, WorkerLost
from infermesh.mesh.registry import Lease, WorkerRegistry
from infermesh.protocol.chat import ChatCompletion, ChatCompletionRequest, ChoiceDelta, Usage
from infermesh.protocol.errors import ErrorBody, ErrorEnvelope
from infermesh.protocol.generation import GenerationChunk, GenerationJob
from infermesh.telemetry import RequestRecord

logger = logging.getLogger(__name__)


class Generation:
    """A job running on a worker: its first chunk has arrived, the rest are streaming."""

    def __init__(
        self,
        identity: ResponseIdentity,
        first: GenerationChunk,
        rest: AsyncIterator[GenerationChunk],
        lease: Lease,
        record: RequestRecord,
    ) -> None:
        self.identity = identity
        self._first: GenerationChunk | None = first
        self._rest = rest
        self._lease = lease
        self._record = record
        self.builder = CompletionBuilder()

    async def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        try:
            if self._first is not None:
                first, self._first = self._first, None
                yield self._observe(first)
            async for chunk in self._rest:
                yield self._observe(chunk)
        except BackendError:
            self._lease.failed()
            raise

    async def aclose(self) -> None:
        """Stop the job if it still runs, and give its worker slot back (idempotent)."""
        try:
            await _close_iterator(self._rest)
        finally:
            self._lease.release()

    def usage(self) -> Usage:
        if self.builder.usage is not None:
            return self.builder.usage
        logger.warning(
            "worker %s sent no usage for %s", self.identity.node_id, self._record.request_id
        )
        return Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)

    def _observe(self, chunk: GenerationChunk) -> GenerationChunk:
        self.builder.add(chunk)
        if chunk.usage is not None:
            self._record.prompt_tokens = chunk.usage.prompt_tokens
            self._record.completion_tokens = chunk.usage.completion_tokens
        if chunk.finish_reason is not None:
            self._record.finish_reason = chunk.finish_reason
            self._lease.succeeded(chunk.usage.completion_tokens if chunk.usage else 0)
        return chunk


class ChatService:
    """Runs chat completions on the mesh, failing over between workers."""

    def __init__(
        self,
        catalog: Catalog,
        registry: WorkerRegistry,
        *,
        max_image_bytes: int,
        max_attempts: int = 3,
    ) -> None:
        self._catalog = catalog
        self._registry = registry
        self._max_image_bytes = max_image_bytes
        self._max_attempts = max_attempts

    async def start(
        self,
        request: ChatCompletionRequest,
        record: RequestRecord,
        *,
        tried: set[str] | None = None,
    ) -> Generation:
        """Check the request, then dispatch it until a worker sends its first chunk.

        A worker that fails before its first chunk is left out and the next one is
        tried, up to ``max_attempts`` workers in all (``tried`` counts across calls).
        Everything that goes wrong before the first token raises here, so the caller
        can still answer with a proper HTTP status.
        """
        spec = self._catalog.get(request.model)
        record.model = spec.id
        record.stream = bool(request.stream)
        check_request(request, spec, max_image_bytes=self._max_image_bytes)
        tried = set() if tried is None else tried
        job = GenerationJob(id=record.request_id, model=spec.id, request=request)
        started = time.perf_counter()
        last_error: BackendError | None = None
        while len(tried) < self._max_attempts:
            lease = await self._acquire(spec.id, tried, last_error)
            tried.add(lease.worker.node_id)
            try:
                return await self._dispatch(job, lease, record, started)
            except BackendError as exc:
                logger.warning(
                    "%s failed on %s: %s", record.request_id, lease.worker.node_id, exc.code
                )
                last_error = exc
        assert last_error is not None
        raise last_error

    async def complete(
        self, request: ChatCompletionRequest, record: RequestRecord
    ) -> ChatCompletion:
        """A whole (non-streamed) completion; a worker lost midway is replaced by another."""
        tried: set[str] = set()
        while True:
            generation = await self.start(request, record, tried=tried)
            try:
                return await self.collect(generation)
            except WorkerLost as exc:
                if len(tried) >= self._max_attempts:
                    raise
                logger.warning(
                    "%s lost its worker midway (%s); retrying", record.request_id, exc.code
                )

    async def collect(self, generation: Generation) -> ChatCompletion:
        """Run a generation to its end and return the whole completion."""
        try:
            async for _ in generation:
                pass
        finally:
            await generation.aclose()
        return generation.identity.completion(generation.builder, generation.usage())

    async def stream(self, generation: Generation, *, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events of ``chat.completion.chunk`` objects, ending ``[DONE]``."""
        identity = generation.identity
        try:
            yield sse_event(_json(identity.chunk(ChoiceDelta(role="assistant", content=""))))
            async for chunk in generation:
                if chunk.content or chunk.tool_calls:
                    delta = ChoiceDelta(content=chunk.content, tool_calls=chunk.tool_calls)
                    yield sse_event(_json(identity.chunk(delta)))
            finish = generation.builder.finish_reason or "stop"
            yield sse_event(_json(identity.chunk(ChoiceDelta(), finish_reason=finish)))
            if include_usage:
                yield sse_event(_json(identity.chunk(None, usage=generation.usage())))
        except InfermeshError as exc:
            yield _error_event(exc.message, exc.error_type, exc.code)
        except Exception:
            logger.exception("stream %s failed", identity.completion_id)
            yield _error_event("The stream failed on the server.", "server_error", "stream_failed")
        finally:
            await generation.aclose()
        yield SSE_DONE

    async def _acquire(self, model: str, tried: set[str], last_error: BackendError | None) -> Lease:
        try:
            return await self._registry.acquire(model, exclude=tried)
        except NoWorkerAvailable:
            if last_error is None or isinstance(last_error, WorkerLost):
                raise
            raise last_error from None  # the engine's own failure says more than "no worker"

    async def _dispatch(
        self, job: GenerationJob, lease: Lease, record: RequestRecord, started: float
    ) -> Generation:
        chunks = lease.worker.generate(job)
        try:
            first = await _first_chunk(chunks)
        except BaseException as exc:
            if isinstance(exc, BackendError):
                lease.failed()
            await _close_iterator(chunks)
            lease.release()
            raise
        lease.first_token()
        record.node_id = lease.worker.node_id
        record.time_to_first_token_ms = (time.perf_counter() - started) * 1000
        identity = ResponseIdentity(
            completion_id=f"chatcmpl-{secrets.token_hex(12)}",
            created=int(time.time()),
            model=job.model,
            node_id=lease.worker.node_id,
        )
        return Generation(identity, first, chunks, lease, record)


async def _first_chunk(chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise WorkerLost("The worker ended the job without any output.") from None


async def _close_iterator(chunks: AsyncIterator[GenerationChunk]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def _json(chunk: BaseModel) -> str:
    return chunk.model_dump_json(exclude_none=True)


def _error_event(message: str, error_type: str, code: str | None) -> str:
    envelope = ErrorEnvelope(error=ErrorBody(message=message, type=error_type, code=code))
    return sse_event(envelope.model_dump_json())
