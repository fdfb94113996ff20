"""``GET /v1/results``, ``GET /v1/results/{id}`` and ``DELETE /v1/results/{id}``: the
caller's async jobs (a job of another account is not found)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from infermesh.accounts.records import Principal
from infermesh.errors import InvalidRequest
from infermesh.gateway.deps import PrincipalDep, ServicesDep
from infermesh.gateway.state import Services
from infermesh.jobs.service import MAX_DEADLINE_SECONDS
from infermesh.jobs.views import job_object
from infermesh.jobs.webhooks import validate_webhook_url
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.jobs import ChatCompletionJob, JobList, JobStatus
from infermesh.telemetry import RequestRecord

router = APIRouter()

DEADLINE_HEADER = "x-infermesh-job-deadline"
WEBHOOK_HEADER = "x-infermesh-webhook-url"


def prefers_async(prefer: list[str]) -> bool:
    """Whether the ``Prefer`` headers (RFC 7240) ask for ``respond-async``."""
    for value in prefer:
        for preference in value.split(","):
            name = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
            if name == "respond-async":
                return True
    return False


async def enqueue_job(
    request: Request,
    services: Services,
    record: RequestRecord,
    principal: Principal,
    chat_request: ChatCompletionRequest,
) -> Response:
    """``202 Accepted`` with the queued job (``Location`` and ``poll`` say where its
    result will be); every refusal a synchronous request would get comes first."""
    webhook = request.headers.get(WEBHOOK_HEADER)
    enqueued = await services.jobs.enqueue(
        chat_request,
        principal,
        record,
        deadline=_deadline(request.headers.get(DEADLINE_HEADER)),
        webhook_url=validate_webhook_url(webhook) if webhook else None,
    )
    services.job_runner.nudge()
    job = job_object(enqueued.job, with_result=False)
    headers = {"location": job.poll, "preference-applied": "respond-async"}
    if enqueued.held:
        headers["x-infermesh-hold-micro-usd"] = str(enqueued.held)
    if enqueued.available is not None:
        headers["x-infermesh-available-micro-usd"] = str(enqueued.available)
    body = job.model_dump_json(exclude_none=True)
    return Response(body, status_code=202, media_type="application/json", headers=headers)


def _deadline(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= MAX_DEADLINE_SECONDS:  # NaN fails this too
        raise InvalidRequest(
            f"{DEADLINE_HEADER} must be a number of seconds from 1 to {MAX_DEADLINE_SECONDS}.",
            code="invalid_job_deadline",
        )
    return seconds


JobId = Annotated[str, Path(max_length=100)]


@router.get("/v1/results", response_model_exclude_none=True)
async def list_results(
    principal: PrincipalDep,
    services: ServicesDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=100)] = None,
) -> JobList:
    """The caller's jobs, newest first, without results (``after``: the last id of the
    page before)."""
    jobs = await services.jobs.list(
        principal.account_id, status=status, limit=limit + 1, after=after
    )
    data = [job_object(job, with_result=False) for job in jobs[:limit]]
    return JobList(data=data, has_more=len(jobs) > limit, last_id=data[-1].id if data else None)


@router.get("/v1/results/{job_id}", response_model_exclude_none=True)
async def get_result(
    job_id: JobId, principal: PrincipalDep, services: ServicesDep
) -> ChatCompletionJob:
    """The job, with its whole ``chat.completion`` once it is complete."""
    return job_object(await services.jobs.get(principal.account_id, job_id), with_result=True)


@router.delete("/v1/results/{job_id}", response_model_exclude_none=True)
async def cancel_result(
    job_id: JobId, principal: PrincipalDep, services: ServicesDep
) -> ChatCompletionJob:
    """Cancel the job: a queued one at once (nothing is charged), a processing one as
    soon as its gateway hears of it (the tokens generated so far are charged, as for a
    client that hangs up). A job that has ended answers 409."""
    job = await services.jobs.cancel(principal.account_id, job_id)
    if job.status == "processing":
        services.job_runner.stop(job.id)  # if it runs on this gateway
    return job_object(job, with_result=False)
