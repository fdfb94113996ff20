"""What the job queue returns, as plain values: jobs, claimed jobs, cancel outcomes,
queue statistics and webhook deliveries (never ORM objects)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

JobStatus = Literal["queued", "processing", "complete", "failed", "dead", "cancelled", "expired"]
FailureStatus = Literal["failed", "dead", "expired", "cancelled"]
"""The final statuses other than success."""
CancelResult = Literal["cancelled", "stopping", "finished", "not_found"]

JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
FAILURE_STATUSES: tuple[FailureStatus, ...] = get_args(FailureStatus)
FINAL_STATUSES: frozenset[str] = frozenset({"complete", *FAILURE_STATUSES})


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as it can be shown. ``result_json`` (the chat completion, once complete)
    is None in lists; the request is never carried here (see :class:`ClaimedJob`)."""

    id: str
    account_id: int
    key_id: str | None
    model: str
    status: JobStatus
    retries: int
    error_code: str | None
    error_message: str | None
    hold_id: str | None
    held: int
    webhook_url: str | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    available_at: datetime
    deadline_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    purge_at: datetime | None
    result_json: str | None = None

    @property
    def final(self) -> bool:
        """Whether the job has ended (it will not run again)."""
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job taken by a runner under a lease: what it needs to run it."""

    id: str
    account_id: int
    key_id: str | None
    model: str
    request_json: str
    hold_id: str | None
    held: int
    retries: int
    """Runs that ended without a result before this one (retried, or their lease lapsed)."""
    webhook_url: str | None
    deadline_at: datetime | None
    lease_expires_at: datetime


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What a cancel did: ``cancelled`` (it was queued; its hold can be released),
    ``stopping`` (its runner will stop it), ``finished`` (it had already ended) or
    ``not_found``. ``job`` is the job after the cancel (None if not found)."""

    status: CancelResult
    job: JobRecord | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The queue at a glance, for metrics."""

    counts: Mapping[str, int]
    """Jobs by status (every status present, 0 if none)."""
    oldest_queued_age: float | None
    """Seconds since the oldest queued job was enqueued (None: none queued)."""
    completed_last_minute: int
    deliveries_pending: int


@dataclass(frozen=True, slots=True)
class JobEvent:
    """Something that happened to a job, to render as a webhook's body."""

    id: str
    type: str
    created_at: datetime
    job: JobRecord


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A webhook event taken by a sender under a lease: POST ``payload`` to ``url``."""

    id: str
    job_id: str
    account_id: int
    url: str
    event_type: str
    payload: str
    attempts: int
    """Attempts so far, this one included."""
    created_at: datetime
    lease_expires_at: datetime
