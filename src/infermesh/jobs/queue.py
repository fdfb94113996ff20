"""The durable queue of asynchronous chat jobs, over the ``async_jobs`` table.

A gateway claims due jobs under a lease, renews it while they run and ends each one
(complete, retried, or a final failure) only while it still holds the lease; a job
whose gateway died is claimed again when its lease lapses. Every operation is one
transaction. On PostgreSQL several gateways claim at once: due rows are taken with
``FOR UPDATE SKIP LOCKED`` and each account's share is decided under a try-lock of
that account, so no job is claimed twice and no account runs more than its limit. On
SQLite the write transaction (``BEGIN IMMEDIATE``) is the only writer.

A job's prompt is deleted in the transaction that ends it, and its result when it is
purged. A job with a webhook URL gets its event recorded in that same transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.errors import NotFound, RateLimited
from infermesh.jobs._bounds import (
    ERROR_CODE_SIZE,
    ERROR_MESSAGE_SIZE,
    check_internal,
    check_owner,
    check_param,
    clamp,
    cut,
    new_id,
)
from infermesh.jobs._claim import Claimer, PerAccountLimit, take
from infermesh.jobs._rows import NO_PAYLOADS, NO_REQUEST, lock, lock_held, record, sweep
from infermesh.jobs.outbox import EventRenderer, Outbox, event_json
from infermesh.jobs.records import (
    FAILURE_STATUSES,
    FINAL_STATUSES,
    JOB_STATUSES,
    CancelOutcome,
    ClaimedJob,
    DeliveryRecord,
    FailureStatus,
    JobRecord,
    JobStatus,
    QueueStats,
)
from infermesh.store import Account, AsyncJob, Database, transaction_lock, utcnow

MAX_LIST = 100
MAX_CLAIM = 100
MAX_SWEEP = 500
PURGE_BATCH = 1000
RENEW_CHUNK = 500
CLAIM_ROUNDS = 4
COMPLETED_WINDOW = timedelta(seconds=60)
DEFAULT_RETENTION = timedelta(days=1)


class TooManyQueuedJobs(RateLimited):
    """The account already has as many queued jobs as it may."""

    code = "too_many_queued_jobs"


class JobQueue:
    """Enqueue, claim, renew and end asynchronous chat jobs; sweep, purge and count
    them; and hand out their webhook deliveries.

    An ended job's result is kept for the ``retention`` a call gives, else the queue's
    own. Times come from ``clock``: gateways that share a queue need clocks in step,
    and leases far longer than the skew between them.
    """

    def __init__(
        self,
        database: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        render_event: EventRenderer = event_json,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        self._db = database
        self._clock = clock
        self._retention = retention
        self.outbox = Outbox(database, clock=clock, render_event=render_event)

    async def enqueue(
        self,
        *,
        job_id: str | None = None,
        account_id: int,
        key_id: str | None,
        model: str,
        request_json: str,
        hold_id: str | None,
        held: int,
        deadline_at: datetime | None,
        webhook_url: str | None,
        max_queued: int,
    ) -> JobRecord:
        """Queue a job, due now. Raises :class:`TooManyQueuedJobs` (and queues nothing)
        if the account already has ``max_queued`` jobs queued."""
        check_internal("job_id", job_id, 64)
        check_param("model", model, 200)
        check_param("webhook_url", webhook_url, 2000)
        check_internal("key_id", key_id, 32)
        check_internal("hold_id", hold_id, 100)
        now = self._clock()
        job = AsyncJob(
            id=job_id or new_id("job_"),
            account_id=account_id,
            key_id=key_id,
            model=model,
            status="queued",
            request=request_json,
            retries=0,
            hold_id=hold_id,
            held=held,
            available_at=now,
            deadline_at=deadline_at,
            cancel_requested=False,
            webhook_url=webhook_url,
            created_at=now,
            updated_at=now,
        )
        async with self._db.session() as session, session.begin():
            await transaction_lock(session, f"infermesh.jobs.enqueue.{account_id}")
            queued = await session.scalar(
                select(func.count())
                .select_from(AsyncJob)
                .where(AsyncJob.account_id == account_id, AsyncJob.status == "queued")
            )
            if (queued or 0) >= max_queued:
                raise TooManyQueuedJobs(
                    f"The account already has {queued} queued jobs, the most it may have. "
                    "Wait for some of them to start.",
                )
            session.add(job)
        return record(job, result=False)

    async def get(self, account_id: int, job_id: str) -> JobRecord | None:
        """The account's job ``job_id`` with its result (None: no such job of the account)."""
        query = (
            select(AsyncJob)
            .options(NO_REQUEST)
            .where(AsyncJob.id == job_id, AsyncJob.account_id == account_id)
        )
        async with self._db.session(read_only=True) as session:
            job = await session.scalar(query)
        return None if job is None else record(job)

    async def list(
        self, account_id: int, *, status: str | None, limit: int, after: str | None
    ) -> builtins.list[JobRecord]:
        """The account's jobs newest first, without payloads: at most ``limit`` (1 to 100),
        of ``status`` if given, those after (older than) the job ``after`` if given.

        Raises :class:`NotFound` if the account has no job ``after``.
        """
        query = select(AsyncJob).options(*NO_PAYLOADS).where(AsyncJob.account_id == account_id)
        if status is not None:
            query = query.where(AsyncJob.status == status)
        async with self._db.session(read_only=True) as session:
            if after is not None:
                cursor = await session.scalar(
                    select(AsyncJob.created_at).where(
                        AsyncJob.id == after, AsyncJob.account_id == account_id
                    )
                )
                if cursor is None:
                    raise NotFound(f"No job '{after}' to list after.", param="after")
                query = query.where(
                    or_(
                        AsyncJob.created_at < cursor,
                        and_(AsyncJob.created_at == cursor, AsyncJob.id < after),
                    )
                )
            query = query.order_by(AsyncJob.created_at.desc(), AsyncJob.id.desc())
            jobs = (await session.scalars(query.limit(clamp(limit, MAX_LIST)))).all()
        return [record(job, result=False) for job in jobs]

    async def claim(
        self,
        owner: str,
        *,
        limit: int,
        lease: timedelta,
        max_processing_per_account: PerAccountLimit | int,
    ) -> builtins.list[ClaimedJob]:
        """Take up to ``limit`` (at most 100) due jobs, oldest first, under a lease of
        ``owner``.

        Due: queued and available (and not past its deadline), or processing with a
        lapsed lease (its runner died: ``retries`` goes up). An account never has more
        than ``max_processing_per_account`` (a number, or one per account id) jobs
        processing; its other jobs stay queued.
        """
        check_owner(owner)
        if limit <= 0:
            return []
        wanted = clamp(limit, MAX_CLAIM)
        cap = max_processing_per_account
        per_account = cap if callable(cap) else (lambda _account: cap)
        now = self._clock()
        claimed: builtins.list[ClaimedJob] = []
        async with self._db.session() as session, session.begin():
            claimer = Claimer(session, now, per_account, postgres=self._db.dialect == "postgresql")
            await claimer.start()
            for _ in range(CLAIM_ROUNDS):
                ids = await claimer.choose(wanted - len(claimed))
                if ids is None:
                    break
                claimed += await take(session, ids, owner, now, now + lease)
                if len(claimed) >= wanted:
                    break
        return claimed

    async def renew(self, owner: str, job_ids: Sequence[str], *, lease: timedelta) -> set[str]:
        """Extend ``owner``'s leases of these jobs to ``lease`` from now. Returns the
        jobs it still holds that were not asked to cancel: the runner stops the others
        (and ends the cancelled ones with :meth:`finish`)."""
        check_owner(owner)
        now = self._clock()
        kept: set[str] = set()
        async with self._db.session() as session, session.begin():
            for start in range(0, len(job_ids), RENEW_CHUNK):
                statement = (
                    update(AsyncJob)
                    .where(
                        AsyncJob.id.in_(list(job_ids[start : start + RENEW_CHUNK])),
                        AsyncJob.status == "processing",
                        AsyncJob.lease_owner == owner,
                    )
                    .values(lease_expires_at=now + lease, updated_at=now)
                    .returning(AsyncJob.id, AsyncJob.cancel_requested)
                    .execution_options(synchronize_session=False)
                )
                rows = await session.execute(statement)
                kept.update(job_id for job_id, cancelling in rows if not cancelling)
        return kept

    async def complete(
        self,
        owner: str,
        job_id: str,
        *,
        result_json: str,
        retention: timedelta | None = None,
    ) -> bool:
        """Store the job's result and end it as complete, if ``owner`` still holds it
        (else change nothing and return False). The result is kept for ``retention``."""
        check_owner(owner)
        now = self._clock()
        async with self._db.session() as session, session.begin():
            job = await lock_held(session, job_id, owner)
            if job is None:
                return False
            job.result = result_json
            self._end(session, job, "complete", now, retention)
        return True

    async def retry(
        self,
        owner: str,
        job_id: str,
        *,
        error_code: str | None,
        error_message: str | None,
        available_at: datetime,
    ) -> bool:
        """Put the job back in the queue, due at ``available_at``, if ``owner`` still
        holds it and no cancel was asked for (else change nothing and return False: a
        cancelled job is ended with :meth:`finish` instead)."""
        check_owner(owner)
        now = self._clock()
        async with self._db.session() as session, session.begin():
            job = await lock_held(session, job_id, owner)
            if job is None or job.cancel_requested:
                return False
            job.status = "queued"
            job.retries += 1
            job.lease_owner = None
            job.lease_expires_at = None
            job.error_code = cut(error_code, ERROR_CODE_SIZE)
            job.error_message = cut(error_message, ERROR_MESSAGE_SIZE)
            job.available_at = available_at
            job.updated_at = now
        return True

    async def finish(
        self,
        owner: str | None,
        job_id: str,
        *,
        status: FailureStatus,
        error_code: str | None,
        error_message: str | None,
        retention: timedelta | None = None,
    ) -> JobRecord | None:
        """End the job with a final status other than success, if ``owner`` still holds
        it, or (``owner`` None) whoever holds it, if it has not ended. The job after,
        or None if nothing changed."""
        if status not in FAILURE_STATUSES:
            raise ValueError(f"not a failure status: {status!r}")
        if owner is not None:
            check_owner(owner)
        now = self._clock()
        async with self._db.session() as session, session.begin():
            if owner is None:
                job = await lock(session, AsyncJob.id == job_id)
                if job is not None and job.status in FINAL_STATUSES:
                    return None
            else:
                job = await lock_held(session, job_id, owner)
            if job is None:
                return None
            job.error_code = cut(error_code, ERROR_CODE_SIZE)
            job.error_message = cut(error_message, ERROR_MESSAGE_SIZE)
            return self._end(session, job, status, now, retention)

    async def cancel(
        self, account_id: int, job_id: str, *, retention: timedelta | None = None
    ) -> CancelOutcome:
        """Cancel the account's job: at once if it is queued, else ask its runner to."""
        now = self._clock()
        async with self._db.session() as session, session.begin():
            job = await lock(session, AsyncJob.id == job_id, AsyncJob.account_id == account_id)
            if job is None:
                return CancelOutcome("not_found", None)
            if job.status in FINAL_STATUSES:
                return CancelOutcome("finished", record(job, result=False))
            if job.status == "queued":
                return CancelOutcome(
                    "cancelled", self._end(session, job, "cancelled", now, retention)
                )
            job.cancel_requested = True
            job.updated_at = now
            return CancelOutcome("stopping", record(job, result=False))

    async def expire_due(
        self, *, retention: timedelta | None = None, limit: int = MAX_SWEEP
    ) -> builtins.list[JobRecord]:
        """End the queued jobs whose deadline has passed as ``expired``, and the
        processing jobs asked to cancel whose runner is gone (lease lapsed) as
        ``cancelled``: at most ``limit`` of each. Returns them (to release their holds)."""
        now = self._clock()
        wanted = clamp(limit, MAX_SWEEP)
        late = and_(AsyncJob.status == "queued", AsyncJob.deadline_at <= now)
        orphaned = and_(
            AsyncJob.status == "processing",
            AsyncJob.cancel_requested == true(),
            AsyncJob.lease_expires_at < now,
        )
        ended: builtins.list[JobRecord] = []
        async with self._db.session() as session, session.begin():
            for job in await sweep(session, late, wanted):
                job.error_code = "job_expired"
                job.error_message = "The job did not start before its deadline."
                ended.append(self._end(session, job, "expired", now, retention))
            for job in await sweep(session, orphaned, wanted):
                ended.append(self._end(session, job, "cancelled", now, retention))
        return ended

    async def purge(self) -> int:
        """Delete up to 1000 ended jobs (and their deliveries) whose retention is over;
        how many were deleted (call again while it returns 1000)."""
        now = self._clock()
        due = (
            select(AsyncJob.id)
            .where(AsyncJob.purge_at <= now)
            .order_by(AsyncJob.purge_at)
            .limit(PURGE_BATCH)
        )
        statement = (
            delete(AsyncJob)
            .where(AsyncJob.id.in_(due))
            .returning(AsyncJob.id)
            .execution_options(synchronize_session=False)
        )
        async with self._db.session() as session, session.begin():
            return len((await session.scalars(statement)).all())

    async def waiting_tiers(self) -> dict[int, str]:
        """The tier of each account with a job queued (for per-tier limits at a claim)."""
        statement = (
            select(AsyncJob.account_id, Account.tier)
            .join(Account, Account.id == AsyncJob.account_id)
            .where(AsyncJob.status == "queued")
            .distinct()
            .limit(10_000)
        )
        async with self._db.session(read_only=True) as session:
            rows = await session.execute(statement)
        return {int(account): str(tier) for account, tier in rows}

    async def stats(self) -> QueueStats:
        """Jobs by status, the age of the oldest queued one, recent completions and the
        webhook deliveries waiting."""
        now = self._clock()
        async with self._db.session(read_only=True) as session:
            rows = await session.execute(
                select(AsyncJob.status, func.count()).group_by(AsyncJob.status)
            )
            counts: dict[str, int] = dict.fromkeys(JOB_STATUSES, 0)
            counts.update({status: int(count) for status, count in rows})
            oldest = await session.scalar(
                select(func.min(AsyncJob.created_at)).where(AsyncJob.status == "queued")
            )
            completed = await session.scalar(
                select(func.count()).where(
                    AsyncJob.status == "complete", AsyncJob.completed_at >= now - COMPLETED_WINDOW
                )
            )
            pending = await self.outbox.pending(session)
        age = None if oldest is None else max((now - oldest).total_seconds(), 0.0)
        return QueueStats(counts, age, int(completed or 0), pending)

    async def claim_deliveries(
        self, owner: str, *, limit: int, lease: timedelta
    ) -> builtins.list[DeliveryRecord]:
        """Take up to ``limit`` (at most 100) due webhook deliveries under a lease of
        ``owner`` (see :meth:`Outbox.claim`)."""
        return await self.outbox.claim(owner, limit=limit, lease=lease)

    async def delivered(self, owner: str, delivery_id: str) -> bool:
        """Mark the delivery done, if ``owner`` still holds it."""
        return await self.outbox.delivered(owner, delivery_id)

    async def delivery_failed(
        self, owner: str, delivery_id: str, *, error: str, next_attempt_at: datetime | None
    ) -> bool:
        """Record a failed attempt, if ``owner`` still holds the delivery: due again at
        ``next_attempt_at``, or (None) given up as failed."""
        return await self.outbox.failed(
            owner, delivery_id, error=error, next_attempt_at=next_attempt_at
        )

    def _end(
        self,
        session: AsyncSession,
        job: AsyncJob,
        status: JobStatus,
        now: datetime,
        retention: timedelta | None,
    ) -> JobRecord:
        """Give the (locked) job its final status, drop its prompt and record its event;
        its result is kept for ``retention`` (None: the queue's)."""
        job.status = status
        job.request = None
        job.lease_owner = None
        job.lease_expires_at = None
        job.completed_at = now
        job.purge_at = now + (self._retention if retention is None else retention)
        job.updated_at = now
        ended = record(job, result=False)
        self.outbox.record(session, ended, now)
        return ended
