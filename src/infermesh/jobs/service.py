"""Async jobs as a client sees them: enqueue, look up, list and cancel.

A job is admitted and paid for when it is enqueued, as a synchronous request would be
when it starts: its model and tier are checked, its rate limits are drawn (its token
budget counts against the token limits then; it holds no concurrency slot while it
waits) and its largest cost is held in the ledger, for as long as the job may live.
The :class:`~infermesh.jobs.runner.QueueRunner` runs it later on that hold and settles
it once, when it ends for good.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from infermesh.accounts.records import Principal
from infermesh.billing.pricing import Pricing
from infermesh.billing.service import Charge, Outcome
from infermesh.chat.run import RunContext
from infermesh.chat.validation import check_request
from infermesh.errors import InfermeshError, InvalidRequest, NotFound
from infermesh.jobs.queue import JobQueue
from infermesh.jobs.records import ClaimedJob, JobRecord
from infermesh.jobs.webhook_secrets import WebhookSecrets
from infermesh.jobs.webhooks import check_target
from infermesh.limits.service import Admission, requested_tokens
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.store import utcnow
from infermesh.telemetry import RequestRecord

logger = logging.getLogger(__name__)

MAX_DEADLINE_SECONDS = 7 * 86_400
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
"""What a job id can look like (others are not looked up: no job has them)."""


class JobNotFound(NotFound):
    """No job of the caller's account has this id."""

    code = "job_not_found"


class JobFinished(InfermeshError):
    """The job has already ended; there is nothing to cancel."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "job_finished"


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How long jobs may live and how many an account may have."""

    max_age: timedelta
    lease: timedelta
    max_queued: int
    retention: timedelta
    allow_private_webhooks: bool = False
    longest_run: timedelta = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Enqueued:
    """A job just queued, and what it holds of the account's credits."""

    job: JobRecord
    held: int
    available: int | None


class JobService:
    """Enqueues chat requests as jobs and answers the caller's questions about them."""

    def __init__(
        self,
        queue: JobQueue,
        runs: RunContext,
        options: JobOptions,
        secrets: WebhookSecrets,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._queue = queue
        self._runs = runs
        self._options = options
        self._secrets = secrets
        self._clock = clock

    @property
    def queue(self) -> JobQueue:
        return self._queue

    async def enqueue(
        self,
        request: ChatCompletionRequest,
        principal: Principal,
        record: RequestRecord,
        *,
        deadline: float | None = None,
        webhook_url: str | None = None,
    ) -> Enqueued:
        """Queue ``request`` for ``principal``; raise what a synchronous request would
        (unknown model, bad request, tier, rate limit, 402) before anything is queued."""
        if request.stream:
            raise InvalidRequest(
                "A streamed request cannot be queued: streaming bypasses the queue. "
                "Drop 'stream' or the 'Prefer: respond-async' header.",
                param="stream",
                code="stream_not_queueable",
            )
        if webhook_url is not None:
            await self._check_webhook(principal.account_id, webhook_url)
        runs = self._runs
        spec = runs.catalog.get(request.model)
        record.model = spec.id
        check_request(request, spec, max_image_bytes=runs.max_image_bytes)
        runs.billing.tiers.check(principal.tier, spec.id, spec.tier)
        admission = await self._admit(principal, request, record)
        try:
            hold_id = f"job_{secrets.token_hex(12)}"
            amount = runs.billing.max_cost(spec, request)
            available = None
            if amount:
                available = await runs.billing.ledger.hold(
                    principal.account_id, hold_id, amount, ttl=self._hold_ttl(deadline)
                )
            charge = job_charge(hold_id, principal.account_id, principal.key_id, spec.id, amount)
            try:
                job = await self._queue.enqueue(
                    job_id=hold_id,
                    account_id=principal.account_id,
                    key_id=principal.key_id,
                    model=spec.id,
                    request_json=request.model_dump_json(exclude_unset=True),
                    hold_id=hold_id if amount else None,
                    held=amount,
                    deadline_at=self._deadline_at(deadline),
                    webhook_url=webhook_url,
                    max_queued=self._options.max_queued,
                )
            except BaseException:
                await release(runs, charge, "not_queued")
                raise
        finally:
            await admission.finish(admission.reserved)  # its budget counts, at enqueue
        return Enqueued(job, amount, available)

    async def get(self, account_id: int, job_id: str) -> JobRecord:
        job = await self._queue.get(account_id, job_id) if _JOB_ID.match(job_id) else None
        if job is None:
            raise JobNotFound(f"No job with id '{job_id[:100]}' was found.")
        return job

    async def list(
        self, account_id: int, *, status: str | None, limit: int, after: str | None
    ) -> list[JobRecord]:
        if after is not None and not _JOB_ID.match(after):
            raise JobNotFound(f"No job with id '{after[:100]}' was found (after).")
        return await self._queue.list(account_id, status=status, limit=limit, after=after)

    async def cancel(self, account_id: int, job_id: str) -> JobRecord:
        """Cancel a queued job at once (its hold is released) or ask the gateway that
        runs a processing one to stop it; a finished job answers 409."""
        if not _JOB_ID.match(job_id):
            raise JobNotFound(f"No job with id '{job_id[:100]}' was found.")
        outcome = await self._queue.cancel(account_id, job_id)
        if outcome.status == "not_found":
            raise JobNotFound(f"No job with id '{job_id[:100]}' was found.")
        if outcome.status == "finished":
            status = outcome.job.status if outcome.job is not None else "ended"
            raise JobFinished(f"The job '{job_id[:100]}' has already ended ({status}).")
        assert outcome.job is not None
        if outcome.status == "cancelled":
            job = outcome.job
            await release(self._runs, charge_of(job), "cancelled")
        return await self.get(account_id, job_id)

    async def _check_webhook(self, account_id: int, url: str) -> None:
        """A webhook needs the account's secret to be signed with, and a target outside
        the gateway's own network (checked again when it is called: DNS can change)."""
        if await self._secrets.get(account_id) is None:
            raise InvalidRequest(
                "This account has no webhook secret yet: create one with "
                "POST /v1/webhooks/secret (it is shown once), then send the webhook URL.",
                code="webhook_secret_missing",
            )
        await check_target(url, allow_private=self._options.allow_private_webhooks)

    async def _admit(
        self, principal: Principal, request: ChatCompletionRequest, record: RequestRecord
    ) -> Admission:
        limits = self._runs.limits
        if limits is None:
            return Admission(None)
        admission = await limits.admit(principal, requested_tokens(request))
        record.response_headers.update(admission.headers)
        return admission

    def _life(self, deadline: float | None) -> timedelta:
        """How long the job may wait (and wait again between retries): its own
        deadline, never more than the gateway's ``max_age``."""
        life = self._options.max_age
        return life if deadline is None else min(life, timedelta(seconds=deadline))

    def _deadline_at(self, deadline: float | None) -> datetime:
        return self._clock() + self._life(deadline)

    def _hold_ttl(self, deadline: float | None) -> timedelta:
        """A job's credits stay held as long as it may wait, then run (a request's
        longest run), with two leases to spare for a gateway that died meanwhile."""
        return self._life(deadline) + self._options.longest_run + 2 * self._options.lease


def job_charge(
    job_id: str,
    account_id: int,
    key_id: str | None,
    model: str,
    held: int,
    pricing: Pricing | None = None,
) -> Charge:
    """The charge of a job: its hold, named by the job's id (so is its usage record).
    It is charged at the prices of the model when it runs, never more than it holds."""
    return Charge(
        id=job_id,
        request_id=job_id,
        account_id=account_id,
        key_id=key_id or "",
        model=model,
        pricing=pricing,
        held=held,
        available=None,
    )


def charge_of(job: JobRecord | ClaimedJob, pricing: Pricing | None = None) -> Charge:
    return job_charge(job.id, job.account_id, job.key_id, job.model, job.held, pricing)


async def release(runs: RunContext, charge: Charge, code: str) -> None:
    """Give back a job's hold (it never ran, or ended without being served)."""
    if not charge.held:
        return
    outcome = Outcome(
        status="failed",
        usage=None,
        stream=False,
        latency_ms=0.0,
        node_id=None,
        operator=None,
        finish_reason=None,
        error_code=code,
    )
    try:
        await runs.billing.settle(charge, outcome)
    except Exception:
        logger.exception("releasing the hold of job %s failed; it will expire", charge.id)
