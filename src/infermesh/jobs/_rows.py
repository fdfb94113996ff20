"""Job rows: locked for a change, swept in batches, and read into records."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from infermesh.jobs.records import JOB_STATUSES, JobRecord, JobStatus
from infermesh.store import AsyncJob

NO_REQUEST = defer(AsyncJob.request, raiseload=True)
"""Leave the prompt unread (it is read only to run the job)."""
NO_PAYLOADS = (NO_REQUEST, defer(AsyncJob.result, raiseload=True))
"""Leave the prompt and the result unread."""


async def lock(session: AsyncSession, *conditions: ColumnElement[bool]) -> AsyncJob | None:
    """The job that meets ``conditions``, locked to the end of the transaction."""
    query = select(AsyncJob).options(*NO_PAYLOADS).where(*conditions).with_for_update()
    job: AsyncJob | None = await session.scalar(query)
    return job


async def lock_held(session: AsyncSession, job_id: str, owner: str) -> AsyncJob | None:
    """The job, locked, if ``owner`` holds its lease."""
    return await lock(
        session,
        AsyncJob.id == job_id,
        AsyncJob.status == "processing",
        AsyncJob.lease_owner == owner,
    )


async def sweep(
    session: AsyncSession, condition: ColumnElement[bool], limit: int
) -> Sequence[AsyncJob]:
    """Up to ``limit`` jobs that meet ``condition``, oldest first, locked (those
    another transaction has locked are left to it)."""
    query = (
        select(AsyncJob)
        .options(*NO_PAYLOADS)
        .where(condition)
        .order_by(AsyncJob.created_at, AsyncJob.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (await session.scalars(query)).all()


def record(job: AsyncJob, *, result: bool = True) -> JobRecord:
    """The job as a record, with its result unless ``result`` is False."""
    return JobRecord(
        id=job.id,
        account_id=job.account_id,
        key_id=job.key_id,
        model=job.model,
        status=_status(job.status),
        retries=job.retries,
        error_code=job.error_code,
        error_message=job.error_message,
        hold_id=job.hold_id,
        held=job.held,
        webhook_url=job.webhook_url,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        updated_at=job.updated_at,
        available_at=job.available_at,
        deadline_at=job.deadline_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        purge_at=job.purge_at,
        result_json=job.result if result else None,
    )


def _status(value: str) -> JobStatus:
    for status in JOB_STATUSES:
        if status == value:
            return status
    raise ValueError(f"unknown job status in the database: {value!r}")
