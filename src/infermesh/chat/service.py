"""The chat completion service: validate, dispatch to a worker, assemble the answer."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from pydantic import BaseModel

from infermesh.catalog.catalog import Catalog
from infermesh.chat.assembly import SSE_DONE, CompletionBuilder, ResponseIdentity, sse_event
from infermesh.chat.validation import check_request
from infermesh.errors import BackendError, InfermeshError
from infermesh.mesh.registry import WorkerRegistry
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
        stack: AsyncExitStack,
        record: RequestRecord,
    ) -> None:
        self.identity = identity
        self._first: GenerationChunk | None = first
        self._rest = rest
        self._stack = stack
        self._record = record
        self.builder = CompletionBuilder()

    async def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        if self._first is not None:
            first, self._first = self._first, None
            yield self._observe(first)
        async for chunk in self._rest:
            yield self._observe(chunk)

    async def aclose(self) -> None:
        await self._stack.aclose()

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
        return chunk


class ChatService:
    """Runs chat completions on the mesh."""

    def __init__(self, catalog: Catalog, registry: WorkerRegistry, *, max_image_bytes: int) -> None:
        self._catalog = catalog
        self._registry = registry
        self._max_image_bytes = max_image_bytes

    async def start(self, request: ChatCompletionRequest, record: RequestRecord) -> Generation:
        """Check the request, pick a worker and wait for its first chunk.

        Everything that can go wrong before the first token raises here, so the
        caller can still answer with a proper HTTP error status.
        """
        spec = self._catalog.get(request.model)
        record.model = spec.id
        record.stream = bool(request.stream)
        check_request(request, spec, max_image_bytes=self._max_image_bytes)
        job = GenerationJob(id=record.request_id, model=spec.id, request=request)
        started = time.perf_counter()
        stack = AsyncExitStack()
        try:
            worker = await stack.enter_async_context(self._registry.lease(spec.id))
            chunks = worker.generate(job)
            stack.push_async_callback(_close_iterator, chunks)
            first = await _first_chunk(chunks)
        except BaseException:
            await stack.aclose()
            raise
        record.node_id = worker.node_id
        record.time_to_first_token_ms = (time.perf_counter() - started) * 1000
        identity = ResponseIdentity(
            completion_id=f"chatcmpl-{secrets.token_hex(12)}",
            created=int(time.time()),
            model=spec.id,
            node_id=worker.node_id,
        )
        return Generation(identity, first, chunks, stack, record)

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


async def _first_chunk(chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise BackendError("The worker ended the job without any output.") from None


async def _close_iterator(chunks: AsyncIterator[GenerationChunk]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def _json(chunk: BaseModel) -> str:
    return chunk.model_dump_json(exclude_none=True)


def _error_event(message: str, error_type: str, code: str | None) -> str:
    envelope = ErrorEnvelope(error=ErrorBody(message=message, type=error_type, code=code))
    return sse_event(envelope.model_dump_json())
