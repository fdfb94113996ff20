"""The chat completion service: validate, dispatch to a worker, fail over, assemble."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import BaseModel

from infermesh.accounts.records import Principal
from infermesh.billing.ledger import BalanceRecord
from infermesh.billing.service import BillingService, billed_usage
from infermesh.catalog.catalog import Catalog
from infermesh.catalog.spec import ModelSpec
from infermesh.chat.assembly import SSE_DONE, ResponseIdentity, sse_event
from infermesh.chat.generation import Generation, Meter, close_iterator
from infermesh.chat.validation import check_request
from infermesh.errors import (
    BackendError,
    InfermeshError,
    NoWorkerAvailable,
    RateLimited,
    WorkerLost,
)
from infermesh.limits.service import Admission, RateLimiter
from infermesh.mesh.registry import Lease, WorkerRegistry
from infermesh.protocol.chat import ChatCompletion, ChatCompletionRequest, ChoiceDelta
from infermesh.protocol.errors import ErrorBody, ErrorEnvelope
from infermesh.protocol.generation import GenerationChunk, GenerationJob
from infermesh.telemetry import RequestRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A request checked, authorized and ready to dispatch."""

    spec: ModelSpec
    job: GenerationJob
    meter: Meter


@dataclass(frozen=True, slots=True)
class Completed:
    """A whole completion, charged; ``balance`` is the account's after it (None if free)."""

    completion: ChatCompletion
    balance: BalanceRecord | None


class ChatService:
    """Runs chat completions on the mesh, failing over between workers, and bills them."""

    def __init__(
        self,
        catalog: Catalog,
        registry: WorkerRegistry,
        billing: BillingService,
        *,
        max_image_bytes: int,
        max_attempts: int = 3,
        limits: RateLimiter | None = None,
    ) -> None:
        self._catalog = catalog
        self._registry = registry
        self._billing = billing
        self._limits = limits
        self._max_image_bytes = max_image_bytes
        self._max_attempts = max_attempts

    async def start(
        self, request: ChatCompletionRequest, record: RequestRecord, principal: Principal
    ) -> Generation:
        """Check and authorize the request, then dispatch it until a worker sends its
        first chunk. Everything that goes wrong before the first token raises here (with
        nothing charged), so the caller can still answer with a proper HTTP status.
        Closing the generation settles its bill."""
        prepared = await self._prepare(request, record, principal)
        try:
            generation = await self._dispatch_with_failover(prepared, record, set())
        except BaseException as exc:
            await self._settle_failure(prepared.meter, exc)
            raise
        generation.meter = prepared.meter
        return generation

    async def complete(
        self, request: ChatCompletionRequest, record: RequestRecord, principal: Principal
    ) -> Completed:
        """A whole (non-streamed) completion, charged; a worker lost midway is replaced."""
        prepared = await self._prepare(request, record, principal)
        meter = prepared.meter
        tried: set[str] = set()
        generation: Generation | None = None
        try:
            while True:
                generation = await self._dispatch_with_failover(prepared, record, tried)
                try:
                    completion = await self.collect(generation)
                    break
                except WorkerLost as exc:
                    if len(tried) >= self._max_attempts:
                        raise
                    logger.warning(
                        "%s lost its worker midway (%s); retrying", record.request_id, exc.code
                    )
        except BaseException as exc:
            if generation is not None and not isinstance(exc, InfermeshError):
                generation.meter = meter  # cut short (the client left): the tokens so far
                await meter.settle(generation.outcome())
            else:
                await self._settle_failure(meter, exc)
            raise
        generation.meter = meter
        charged = await meter.settle(generation.outcome())
        completion.usage = billed_usage(completion.usage, charged)
        settled = meter.settled
        balance = settled.balance if settled and meter.charge.held else None
        return Completed(completion, balance)

    async def collect(self, generation: Generation) -> ChatCompletion:
        """Run a generation to its end and return the whole completion."""
        try:
            async for _ in generation:
                pass
        finally:
            await generation.aclose()
        usage = generation.usage()
        return generation.identity.completion(generation.builder, billed_usage(usage, 0))

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
                usage = generation.usage()
                cost = generation.meter.charge.cost(usage) if generation.meter else 0
                yield sse_event(_json(identity.chunk(None, usage=billed_usage(usage, cost))))
        except InfermeshError as exc:
            yield _error_event(exc.message, exc.error_type, exc.code)
        except Exception:
            logger.exception("stream %s failed", identity.completion_id)
            yield _error_event("The stream failed on the server.", "server_error", "stream_failed")
        finally:
            await generation.aclose()
        yield SSE_DONE

    async def _prepare(
        self, request: ChatCompletionRequest, record: RequestRecord, principal: Principal
    ) -> _Prepared:
        spec = self._catalog.get(request.model)
        record.model = spec.id
        record.stream = bool(request.stream)
        check_request(request, spec, max_image_bytes=self._max_image_bytes)
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        self._billing.tiers.check(principal.tier, spec.id, spec.tier)
        admission = await self._admit(principal, request, record)
        try:
            charge = await self._billing.authorize(
                principal, spec, request, charge_id=completion_id, request_id=record.request_id
            )
        except BaseException:
            await admission.finish(0)
            raise
        meter = Meter(self._billing, charge, record, time.perf_counter(), admission=admission)
        job = GenerationJob(id=completion_id, model=spec.id, request=request)
        return _Prepared(spec, job, meter)

    async def _admit(
        self, principal: Principal, request: ChatCompletionRequest, record: RequestRecord
    ) -> Admission:
        """Let the request in under its rate limits; the headers say how much is left."""
        if self._limits is None:
            return Admission(None)
        try:
            admission = await self._limits.admit(principal, request)
        except RateLimited as exc:
            record.response_headers.update(exc.headers)
            raise
        record.response_headers.update(admission.headers)
        return admission

    async def _dispatch_with_failover(
        self, prepared: _Prepared, record: RequestRecord, tried: set[str]
    ) -> Generation:
        """Dispatch until a worker sends a first chunk; a worker that fails before it is
        left out and the next is tried, up to ``max_attempts`` in all (``tried`` counts
        across calls)."""
        last_error: BackendError | None = None
        while len(tried) < self._max_attempts:
            lease = await self._acquire(prepared.spec.id, tried, last_error)
            tried.add(lease.worker.node_id)
            try:
                return await self._dispatch(prepared, lease, record)
            except BackendError as exc:
                logger.warning(
                    "%s failed on %s: %s", record.request_id, lease.worker.node_id, exc.code
                )
                last_error = exc
        assert last_error is not None
        raise last_error

    async def _settle_failure(self, meter: Meter, exc: BaseException) -> None:
        """Nothing is charged for a request that failed; its hold is released."""
        if isinstance(exc, InfermeshError):
            await meter.settle(meter.outcome("failed", None, error_code=exc.code))
        else:
            await meter.settle(meter.outcome("cancelled", None, error_code=type(exc).__name__))

    async def _acquire(self, model: str, tried: set[str], last_error: BackendError | None) -> Lease:
        try:
            return await self._registry.acquire(model, exclude=tried)
        except NoWorkerAvailable:
            if last_error is None or isinstance(last_error, WorkerLost):
                raise
            raise last_error from None  # the engine's own failure says more than "no worker"

    async def _dispatch(
        self, prepared: _Prepared, lease: Lease, record: RequestRecord
    ) -> Generation:
        chunks = lease.worker.generate(prepared.job)
        try:
            first = await _first_chunk(chunks)
        except BaseException as exc:
            if isinstance(exc, BackendError):
                lease.failed()
            await close_iterator(chunks)
            lease.release()
            raise
        lease.first_token()
        record.node_id = lease.worker.node_id
        record.time_to_first_token_ms = (time.perf_counter() - prepared.meter.started) * 1000
        identity = ResponseIdentity(
            completion_id=prepared.job.id,
            created=int(time.time()),
            model=prepared.job.model,
            node_id=lease.worker.node_id,
        )
        return Generation(identity, first, chunks, lease, record)


async def _first_chunk(chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise WorkerLost("The worker ended the job without any output.") from None


def _json(chunk: BaseModel) -> str:
    return chunk.model_dump_json(exclude_none=True)


def _error_event(message: str, error_type: str, code: str | None) -> str:
    envelope = ErrorEnvelope(error=ErrorBody(message=message, type=error_type, code=code))
    return sse_event(envelope.model_dump_json())
