"""The Jobs page: the account's async jobs, newest first, filtered by status and paged;
one job with its result; cancelling a job that has not ended.

Every read and change goes through :class:`~infermesh.jobs.service.JobService`, as
``GET /v1/results``, ``GET /v1/results/{id}`` and ``DELETE /v1/results/{id}`` do. The
API needs the account's key; the dashboard shows the same job to the signed-in account,
its result pretty-printed (and escaped, like everything a template writes). A job id of
another account answers 404, like one that does not exist.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response

from infermesh.errors import InvalidRequest
from infermesh.gateway.dashboard.format import usd_text
from infermesh.gateway.dashboard.paging import cursor, given, page_link
from infermesh.gateway.dashboard.routing import account_viewer, dashboard_router
from infermesh.gateway.dashboard.web import PREFIX, checked_form, redirect, render
from infermesh.jobs.records import JOB_STATUSES, JobRecord
from infermesh.jobs.service import JobFinished

router = dashboard_router()

JOBS = f"{PREFIX}/jobs"
PAGE_SIZE = 25
CANCELLABLE = frozenset({"queued", "processing"})


@router.get("/jobs")
async def jobs_page(request: Request) -> Response:
    """The account's jobs, newest first, :data:`PAGE_SIZE` at a time."""
    page, principal = await account_viewer(request)
    status = _status(request.query_params.get("status"))
    after = cursor(request)
    jobs = await page.services.jobs.list(
        principal.account_id, status=status, limit=PAGE_SIZE + 1, after=after
    )
    shown = jobs[:PAGE_SIZE]
    return render(
        request,
        "jobs.html",
        session=page.session,
        jobs=shown,
        status=status,
        statuses=JOB_STATUSES,
        cancellable=CANCELLABLE,
        next_link=_link(status, after=shown[-1].id) if len(jobs) > PAGE_SIZE else None,
        first_link=_link(status) if after is not None else None,
        page_size=PAGE_SIZE,
        notice=request.query_params.get("notice"),
    )


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> Response:
    """One job of the account, with its whole result once it is complete."""
    page, principal = await account_viewer(request)
    job = await page.services.jobs.get(principal.account_id, job_id)
    result = _result(job)
    return render(
        request,
        "job.html",
        session=page.session,
        job=job,
        result_text=None if result is None else json.dumps(result, indent=2, ensure_ascii=False),
        answer=_answer(result),
        held=usd_text(job.held),
        cancellable=job.status in CANCELLABLE,
        notice=request.query_params.get("notice"),
    )


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> Response:
    """Cancel a queued job at once, or ask the gateway running it to stop it."""
    page, principal = await account_viewer(request)
    await checked_form(request, page.session)
    services = page.services
    try:
        job = await services.jobs.cancel(principal.account_id, job_id)
    except JobFinished as exc:
        return redirect(f"{JOBS}/{job_id}", notice=exc.message)
    if job.status == "processing":
        services.job_runner.stop(job.id)  # if it runs on this gateway
        notice = "Stopping the job: it ends as cancelled in a moment."
    else:
        notice = "Cancelled the job: nothing is charged for it."
    return redirect(f"{JOBS}/{job.id}", notice=notice)


def _status(value: str | None) -> str | None:
    status = given(value)
    if status is not None and status not in JOB_STATUSES:
        raise InvalidRequest(
            f"status must be one of {', '.join(JOB_STATUSES)}; not '{status[:50]}'.",
            param="status",
        )
    return status


def _link(status: str | None, **extra: str) -> str:
    return page_link(JOBS, {"status": status, **extra})


def _result(job: JobRecord) -> dict[str, Any] | None:
    if job.result_json is None:
        return None
    result: dict[str, Any] = json.loads(job.result_json)
    return result


def _answer(result: dict[str, Any] | None) -> str | None:
    """The text of the result's first choice, if it has one."""
    if result is None:
        return None
    choices = result.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None
