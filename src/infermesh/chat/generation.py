"""A job running on a worker, as the chat service streams it, and its bill."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from infermesh.billing.ledger import Settled
from infermesh.billing.service import BillingService, Charge, Outcome, OutcomeStatus
from infermesh.chat.assembly import CompletionBuilder, ResponseIdentity
from infermesh.errors import InfermeshError
from infermesh.limits.service import Admission
from infermesh.mesh.registry import Lease
from infermesh.protocol.chat import Usage
from infermesh.protocol.generation import GenerationChunk
from infermesh.telemetry import RequestRecord

logger = logging.getLogger(__name__)

NO_USAGE = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
_CLOSE_TIMEOUT = 10.0


@dataclass
class Meter:
    """Bills one request: its charge (the hold) and when it started."""

    billing: BillingService
    charge: Charge
    record: RequestRecord
    started: float
    admission: Admission | None = None
    settled: Settled | None = None

    async def settle(self, outcome: Outcome) -> int:
        """Settle the charge and count the tokens against the rate limits (shielded
        from cancellation); return the amount charged.

        A failure to settle is logged, not raised: the client has its answer, and the
        hold is released when it expires.
        """
        with anyio.CancelScope(shield=True):
            try:
                settled = await self.billing.settle(self.charge, outcome)
            except Exception:
                logger.exception("settling %s failed; its hold will expire", self.charge.id)
                return 0
            finally:
                if self.admission is not None:
                    await self.admission.finish(counted_tokens(outcome))
        self.settled = settled
        self.record.cost_micro_usd = settled.charged
        return settled.charged

    def outcome(
        self,
        status: OutcomeStatus,
        usage: Usage | None,
        *,
        lease: Lease | None = None,
        finish_reason: str | None = None,
        error_code: str | None = None,
    ) -> Outcome:
        worker = lease.worker if lease is not None else None
        return Outcome(
            status=status,
            usage=usage,
            stream=bool(self.record.stream),
            latency_ms=(time.perf_counter() - self.started) * 1000,
            node_id=worker.node_id if worker is not None else None,
            operator=worker.operator if worker is not None else None,
            finish_reason=finish_reason,
            error_code=error_code,
        )


class Generation:
    """A job running on a worker: its first chunk has arrived, the rest are streaming.

    With a ``meter``, closing the generation settles its bill: the usage if it
    finished, nothing if the worker failed, the tokens counted so far if it was cut
    short (the client went away).
    """

    def __init__(
        self,
        identity: ResponseIdentity,
        first: GenerationChunk,
        rest: AsyncIterator[GenerationChunk],
        lease: Lease,
        record: RequestRecord,
        meter: Meter | None = None,
    ) -> None:
        self.identity = identity
        self._first: GenerationChunk | None = first
        self._rest = rest
        self._lease = lease
        self._record = record
        self.meter = meter
        self.builder = CompletionBuilder()
        self._progress: Usage | None = None
        self._error_code: str | None = None
        self._warned_no_usage = False
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        try:
            if self._first is not None:
                first, self._first = self._first, None
                yield self._observe(first)
            async for chunk in self._rest:
                yield self._observe(chunk)
        except InfermeshError as exc:
            self._error_code = exc.code or "backend_error"
            if exc.status_code >= 500:
                self._lease.failed()
            raise

    @property
    def finished(self) -> bool:
        return self.builder.finish_reason is not None

    async def aclose(self) -> None:
        """Stop the job if it still runs, give its worker slot back and settle (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):  # even when cancelled
                await close_iterator(self._rest)
        finally:
            self._lease.release()
            if self.meter is not None:
                await self.meter.settle(self.outcome())

    def outcome(self) -> Outcome:
        """How the generation ended, for its bill."""
        assert self.meter is not None
        if self.finished:
            return self.meter.outcome(
                "succeeded",
                self.usage(),
                lease=self._lease,
                finish_reason=self.builder.finish_reason,
            )
        if self._error_code is not None:
            return self.meter.outcome(
                "failed", self._progress, lease=self._lease, error_code=self._error_code
            )
        return self.meter.outcome(
            "cancelled", self._progress, lease=self._lease, error_code="client_disconnected"
        )

    def usage(self) -> Usage:
        if self.builder.usage is not None:
            return self.builder.usage
        if not self._warned_no_usage:  # asked for by the response and again by the bill
            self._warned_no_usage = True
            logger.warning(
                "worker %s sent no usage for %s", self.identity.node_id, self._record.request_id
            )
        return self._progress or NO_USAGE

    def _observe(self, chunk: GenerationChunk) -> GenerationChunk:
        self.builder.add(chunk)
        if chunk.progress is not None:
            self._progress = chunk.progress
        if chunk.usage is not None:
            self._progress = chunk.usage
            self._record.prompt_tokens = chunk.usage.prompt_tokens
            self._record.completion_tokens = chunk.usage.completion_tokens
        if chunk.finish_reason is not None:
            self._record.finish_reason = chunk.finish_reason
            self._lease.succeeded(chunk.usage.completion_tokens if chunk.usage else 0)
        return chunk


def counted_tokens(outcome: Outcome) -> int:
    """The tokens a request counts against its limits: those it is billed for."""
    if not outcome.served or outcome.usage is None:
        return 0
    return outcome.usage.prompt_tokens + outcome.usage.completion_tokens


async def close_iterator(chunks: AsyncIterator[GenerationChunk]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
