"""One request's whole life, owned by one object: :class:`ChatRun`.

It owns chat completions (and the Responses and Messages APIs, which translate to them)
and embeddings alike; what differs between them is the run's
:class:`~infermesh.chat.tasks.Task`.

A run admits the request under its rate limits, holds its largest possible cost,
leases a worker slot (failing over before the first token), reads the generation
within its deadlines, and settles: the bill, the tokens counted against the limits,
the worker's record in routing. It settles exactly once on every path (success,
error, failover, client gone, cancellation, timeout), in a task of its own that a
cancelled caller waits for, so that no cancellation can cut a settlement short.

Use it as an async context manager (``async with service.run(...) as run``), or call
:meth:`ChatRun.open` and, on every path, :meth:`ChatRun.close`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from infermesh.accounts.records import Principal
from infermesh.billing.records import Settled
from infermesh.billing.service import BillingService, Charge, Outcome, OutcomeStatus
from infermesh.catalog.catalog import Catalog
from infermesh.catalog.spec import ModelSpec
from infermesh.chat.accounting import Audit, Relayed, UsageBounds, audit_usage, clamp_usage
from infermesh.chat.assembly import ResponseIdentity
from infermesh.chat.counting import TokenCounter, TokenCounters
from infermesh.chat.generation import Deadlines, Generation, stop_job
from infermesh.chat.tasks import ChatTask, EmbeddingTask, task_for
from infermesh.chat.vectors import VectorAssembly
from infermesh.errors import (
    BackendError,
    InfermeshError,
    NoWorkerAvailable,
    RateLimited,
    WorkerLost,
    WorkerTimeout,
)
from infermesh.limits.service import Admission, RateLimiter
from infermesh.mesh.registry import Lease, WorkerRegistry
from infermesh.mesh.worker import JobTerms, Worker
from infermesh.protocol.chat import ChatCompletionRequest, Usage
from infermesh.protocol.embeddings import EmbeddingRequest
from infermesh.protocol.generation import GenerationChunk, WorkerJob
from infermesh.telemetry import RequestRecord

logger = logging.getLogger(__name__)

T = TypeVar("T")
NO_USAGE = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


@dataclass(frozen=True, slots=True)
class RunContext:
    """What every run of one gateway shares."""

    catalog: Catalog
    registry: WorkerRegistry
    billing: BillingService
    limits: RateLimiter | None
    counters: TokenCounters
    deadlines: Deadlines
    max_image_bytes: int
    max_attempts: int


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a finished run tells the client besides its answer (the route makes headers)."""

    node_id: str | None
    usage: Usage
    cost: int
    settled: Settled | None
    charge: Charge | None


class ChatRun:
    """One chat completion request; see the module docstring.

    ``endpoint`` names the API the request came through (its usage record says it).
    A ``prepaid`` run (an async job's) was admitted and had its cost held when it was
    enqueued: it is not admitted again, runs on that charge, and does not settle it;
    its owner settles once the job ends for good (a job that fails may run again on
    the same hold), from :attr:`outcome`.
    """

    def __init__(
        self,
        context: RunContext,
        request: ChatCompletionRequest | EmbeddingRequest,
        record: RequestRecord,
        principal: Principal,
        *,
        prepaid: Charge | None = None,
        endpoint: str = "chat.completions",
    ) -> None:
        self._context = context
        self.endpoint = endpoint
        self.request = request
        self.task: ChatTask | EmbeddingTask = task_for(request)
        self._record = record
        self._principal = principal
        self._prepaid = prepaid
        self.outcome: Outcome | None = None
        self.id = f"{self.task.id_prefix}-{secrets.token_hex(12)}"
        self.started = time.perf_counter()
        self._ends_at = asyncio.get_running_loop().time() + context.deadlines.total
        self.spec: ModelSpec | None = None
        self.charge: Charge | None = None
        self.generation: Generation | None = None
        self.result: RunResult | None = None
        self._admission: Admission | None = None
        self._counter: TokenCounter | None = None
        self._bounds: UsageBounds | None = None
        self._audited: Audit | None = None
        self._job: WorkerJob | None = None
        self._tried: set[str] = set()
        self._failed_on: Worker | None = None
        """The last worker that failed the job before its first chunk (for the record)."""
        self._closing: asyncio.Future[RunResult] | None = None

    async def __aenter__(self) -> ChatRun:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close(exc)

    async def open(self) -> None:
        """Check the request, let it in under its limits and hold its largest cost.
        Raises (with everything given back) if any of it fails."""
        try:
            await self._open()
        except BaseException as exc:
            await self.close(exc)
            raise

    async def dispatch(self) -> Generation:
        """Send the job to workers until one sends its first chunk; a worker that fails
        before it is left out and the next is tried, up to ``max_attempts`` in all."""
        last_error: BackendError | None = None
        while len(self._tried) < self._context.max_attempts:
            lease = await self._acquire(last_error)
            self._tried.add(lease.worker.node_id)
            try:
                self.generation = await self._start(lease)
                return self.generation
            except BackendError as exc:
                logger.warning(
                    "%s failed on %s: %s", self._record.request_id, lease.worker.node_id, exc.code
                )
                self._failed_on = lease.worker
                last_error = exc
        assert last_error is not None
        raise last_error

    async def complete(self) -> Generation:
        """Run the request to its end; a worker lost midway is replaced (the answer is
        not sent until it is whole, so nobody has seen the lost one's tokens)."""
        while True:
            generation = await self.dispatch()
            try:
                async for _ in generation:
                    pass
                return generation
            except WorkerLost as exc:
                if len(self._tried) >= self._context.max_attempts:
                    raise
                logger.warning(
                    "%s lost its worker midway (%s); retrying", self._record.request_id, exc.code
                )
                await self._drop(generation)

    async def close(self, error: BaseException | None = None) -> RunResult:
        """Stop what still runs and settle, once; a cancelled caller still waits for
        the settlement to finish (then the cancellation goes on)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._settle(error))
        return await _through_cancellation(self._closing)

    def usage(self) -> Usage:
        """The usage of the generation as the gateway stands behind it (so far)."""
        generation = self.generation
        if generation is None or generation.claimed is None:
            return NO_USAGE
        if generation.finished:
            return self._audit(generation).usage
        return clamp_usage(generation.claimed, self._usage_bounds(), self._relayed())

    # --- opening ----------------------------------------------------------------------

    async def _open(self) -> None:
        context, task, record = self._context, self.task, self._record
        spec = self.spec = context.catalog.get(task.model)
        record.model = spec.id
        record.stream = task.streamed
        task.check(spec, max_image_bytes=context.max_image_bytes)
        if self._prepaid is not None:
            self.charge = self._prepaid
        else:
            context.billing.tiers.check(self._principal.tier, spec.id, spec.tier)
            self._admission = await self._admit()
            self.charge = await context.billing.authorize(
                self._principal,
                spec,
                task.token_bound(spec),
                charge_id=self.id,
                request_id=record.request_id,
            )
        self._job = task.job(self.id, spec)

    async def _admit(self) -> Admission:
        """Let the request in under its rate limits; the headers say how much is left."""
        limits = self._context.limits
        if limits is None:
            return Admission(None)
        try:
            admission = await limits.admit(self._principal, self.task.token_budget())
        except RateLimited as exc:
            self._record.response_headers.update(exc.headers)
            raise
        self._record.response_headers.update(admission.headers)
        return admission

    # --- dispatching ------------------------------------------------------------------

    async def _acquire(self, last_error: BackendError | None) -> Lease:
        assert self.spec is not None
        try:
            return await self._context.registry.acquire(self.spec.id, exclude=self._tried)
        except NoWorkerAvailable:
            if last_error is None or isinstance(last_error, WorkerLost):
                raise
            raise last_error from None  # the engine's own failure says more than "no worker"

    async def _start(self, lease: Lease) -> Generation:
        """The job on ``lease``'s worker, once its first chunk has come."""
        assert self._job is not None and self.spec is not None
        terms = JobTerms(
            self.task.max_output_tokens(self.spec),
            on_end=lease.end_slot,
            vector_chars=self.task.vector_chars(self.spec),
            vectors=self.task.vector_count,
        )
        chunks = lease.worker.generate(self._job, terms)
        try:
            first = await self._first_chunk(chunks)
        except BaseException as exc:
            if isinstance(exc, BackendError):
                lease.failed()
            await stop_job(chunks, lease.worker.node_id)
            lease.release()
            raise
        lease.first_token()
        self._record.node_id = lease.worker.node_id
        self._record.time_to_first_token_ms = (time.perf_counter() - self.started) * 1000
        return Generation(
            self._identity(lease),
            first,
            chunks,
            lease,
            deadlines=self._context.deadlines,
            ends_at=self._ends_at,
            vectors=self._vector_assembly(),
        )

    def _vector_assembly(self) -> VectorAssembly | None:
        task = self.task
        if not isinstance(task, EmbeddingTask):
            return None
        assert self.spec is not None
        return VectorAssembly(len(task.inputs), task.dimensions(self.spec))

    async def _first_chunk(self, chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk:
        loop = asyncio.get_running_loop()
        timeout = min(self._context.deadlines.first_token, self._ends_at - loop.time())
        try:
            async with asyncio.timeout(max(timeout, 0)):
                return await anext(chunks)
        except StopAsyncIteration:
            raise WorkerLost("The worker ended the job without any output.") from None
        except TimeoutError:
            raise WorkerTimeout(
                f"The worker sent no first token within {max(timeout, 0):.0f}s."
            ) from None

    def _identity(self, lease: Lease) -> ResponseIdentity:
        assert self.spec is not None
        return ResponseIdentity(
            completion_id=self.id,
            created=int(time.time()),
            model=self.spec.id,
            node_id=lease.worker.node_id,
        )

    async def _drop(self, generation: Generation) -> None:
        """Give up a generation that failed midway (nothing of it is billed)."""
        await generation.aclose()
        generation.lease.failed()
        generation.lease.release()
        self.generation = None

    # --- usage ------------------------------------------------------------------------

    def _usage_bounds(self) -> UsageBounds:
        """The bounds of the worker's usage claims (counted when first needed: at the
        end of the request, not on its way to the worker)."""
        if self._bounds is None:
            assert self.spec is not None
            self._bounds = self.task.usage_bounds(self._token_counter(), self.spec)
        return self._bounds

    def _token_counter(self) -> TokenCounter:
        if self._counter is None:
            assert self.spec is not None
            self._counter = self._context.counters.for_model(self.spec)
        return self._counter

    def _audit(self, generation: Generation) -> Audit:
        """The finished generation's usage claim, checked (once: the answer's usage and
        the bill are the same)."""
        if self._audited is None:
            claimed = generation.claimed
            if claimed is None:
                logger.warning(
                    "worker %s sent no usage for %s",
                    generation.lease.worker.node_id,
                    self._record.request_id,
                )
                claimed = NO_USAGE
            self._audited = audit_usage(claimed, self._usage_bounds(), self._relayed())
        return self._audited

    def _relayed(self) -> Relayed:
        generation = self.generation
        assert generation is not None
        builder = generation.builder
        return Relayed(
            text_bytes=generation.text_bytes,
            tool_calls=builder.tool_call_count,
            count_text=lambda: self._token_counter().count_text(builder.text()),
        )

    # --- settling ---------------------------------------------------------------------

    async def _settle(self, error: BaseException | None) -> RunResult:
        generation = self.generation
        if generation is not None:
            await generation.aclose()
        outcome = self.outcome = self._outcome(error)
        if self._prepaid is not None:  # its owner settles it
            settled = None
            cost = self._prepaid.cost(outcome.usage or NO_USAGE) if outcome.served else 0
        else:
            settled = await self._bill(outcome)
            cost = settled.charged if settled is not None else 0
        tokens = _counted_tokens(outcome)
        if self._admission is not None:
            await self._admission.finish(tokens)
        self._record.cost_micro_usd = cost if self.charge is not None else None
        usage = outcome.usage or NO_USAGE
        node_id = generation.lease.worker.node_id if generation is not None else None
        self.result = RunResult(node_id, usage, cost, settled, self.charge)
        return self.result

    def _outcome(self, error: BaseException | None) -> Outcome:
        """How the run ended, for its bill; the lease learns it too, and is released."""
        generation = self.generation
        if generation is None:
            if isinstance(error, InfermeshError):
                return self._ending("failed", None, error_code=error.code, worker=self._failed_on)
            return self._ending("cancelled", None, error_code=_cancel_code(error))
        lease = generation.lease
        try:
            if generation.finished:
                return self._finished(generation)
            usage = self.usage() if generation.claimed is not None else None
            if generation.error_code is not None or isinstance(error, InfermeshError):
                code = generation.error_code or getattr(error, "code", None)
                return self._ending("failed", usage, lease=lease, error_code=code)
            return self._ending("cancelled", usage, lease=lease, error_code=_cancel_code(error))
        finally:
            lease.release()

    def _finished(self, generation: Generation) -> Outcome:
        lease = generation.lease
        audit = self._audit(generation)
        if audit.violation is not None:
            lease.failed()
            lease.worker.penalize(f"usage beyond what the gateway saw ({audit.violation})")
        else:
            lease.succeeded(audit.usage.completion_tokens)
        self._record.prompt_tokens = audit.usage.prompt_tokens
        self._record.completion_tokens = audit.usage.completion_tokens
        self._record.finish_reason = generation.builder.finish_reason
        return self._ending(
            "succeeded", audit.usage, lease=lease, finish_reason=generation.builder.finish_reason
        )

    def _ending(
        self,
        status: OutcomeStatus,
        usage: Usage | None,
        *,
        lease: Lease | None = None,
        finish_reason: str | None = None,
        error_code: str | None = None,
        worker: Worker | None = None,
    ) -> Outcome:
        """How the run ended; its worker is the lease's, else ``worker`` (one that failed
        the job before its first chunk)."""
        if lease is not None:
            worker = lease.worker
        return Outcome(
            status=status,
            usage=usage,
            stream=bool(self._record.stream),
            latency_ms=(time.perf_counter() - self.started) * 1000,
            node_id=worker.node_id if worker is not None else None,
            operator=worker.operator if worker is not None else None,
            finish_reason=finish_reason,
            error_code=error_code,
            endpoint=self.endpoint,
        )

    async def _bill(self, outcome: Outcome) -> Settled | None:
        """Settle the charge; a failure is logged, not raised (the hold then expires)."""
        if self.charge is None:
            return None
        try:
            return await self._context.billing.settle(self.charge, outcome)
        except Exception:
            logger.exception("settling %s failed; its hold will expire", self.charge.id)
            return None


def _counted_tokens(outcome: Outcome) -> int:
    """The tokens a request counts against its limits: those it is billed for."""
    if not outcome.served or outcome.usage is None:
        return 0
    return outcome.usage.prompt_tokens + outcome.usage.completion_tokens


def _cancel_code(error: BaseException | None) -> str:
    if error is None or isinstance(error, asyncio.CancelledError):
        return "client_disconnected"
    return type(error).__name__[:64]


async def _through_cancellation(future: asyncio.Future[T]) -> T:
    """``future``'s result; if the caller is cancelled meanwhile, it still waits for
    the future to finish, then re-raises the cancellation."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
            break
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
