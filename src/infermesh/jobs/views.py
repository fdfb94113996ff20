"""A job as the API shows it (one view for every route and the CLI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from infermesh.jobs.records import JobRecord
from infermesh.protocol.jobs import ChatCompletionJob, JobError


def job_object(job: JobRecord, *, with_result: bool) -> ChatCompletionJob:
    error = None
    if job.error_message or job.error_code:
        error = JobError(code=job.error_code, message=job.error_message or job.error_code or "")
    return ChatCompletionJob(
        id=job.id,
        status=job.status,
        model=job.model,
        poll=f"/v1/results/{job.id}",
        retries=job.retries,
        created=_seconds(job.created_at),
        updated=_seconds(job.updated_at),
        started=_seconds(job.started_at),
        completed=_seconds(job.completed_at),
        deadline=_seconds(job.deadline_at),
        webhook_url=job.webhook_url,
        error=error,
        result=_result(job.result_json) if with_result else None,
    )


def _seconds(moment: datetime | None) -> Any:
    return None if moment is None else int(moment.timestamp())


def _result(result_json: str | None) -> dict[str, Any] | None:
    if result_json is None:
        return None
    result: dict[str, Any] = orjson.loads(result_json)
    return result
