"""The admin's Errors page: recent failed requests of every account, newest first.

Read from the usage records (:class:`~infermesh.billing.errors_view.FailedRequestLog`),
filtered by error code and model from a GET form, and paged; the filters stay in the
paging links.
"""

from __future__ import annotations

from fastapi import Request, Response

from infermesh.billing.errors_view import FailedRequestLog
from infermesh.gateway.dashboard.paging import cursor, given, page_link
from infermesh.gateway.dashboard.routing import admin_viewer, dashboard_router
from infermesh.gateway.dashboard.web import PREFIX, render

router = dashboard_router()
ERRORS = f"{PREFIX}/admin/errors"
PAGE_SIZE = 50


@router.get("/admin/errors")
async def errors_page(request: Request) -> Response:
    """Failed requests, :data:`PAGE_SIZE` at a time."""
    page = await admin_viewer(request)
    services = page.services
    params = request.query_params
    filters = {
        name: value for name in ("error_code", "model") if (value := given(params.get(name)))
    }
    after = cursor(request)
    await services.billing.flush()
    log = FailedRequestLog(services.database)
    failed, more = await log.page(
        limit=PAGE_SIZE,
        after=after,
        error_code=filters.get("error_code"),
        model=filters.get("model"),
    )
    last = failed[-1].id if more and failed else None
    return render(
        request,
        "admin_errors.html",
        session=page.session,
        failed=failed,
        filters=filters,
        codes=await log.error_codes(),
        models=sorted(spec.id for spec in services.catalog),
        next_link=page_link(ERRORS, {**filters, "after": last}) if last else None,
        first_link=page_link(ERRORS, filters) if after is not None else None,
        page_size=PAGE_SIZE,
        notice=params.get("notice"),
    )
