"""The Usage page: the account's requests, newest first, filtered and paged; and the
same records as a CSV file.

Both read :class:`~infermesh.billing.usage.UsageLog`, as ``GET /v1/usage`` does. The
filters come from a GET form and stay in the paging and export links. The export is
streamed a page of records at a time (bounded memory), at most :data:`CSV_MAX_ROWS`
rows, with text cells guarded against spreadsheet formulas (:func:`csv_cell`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from infermesh.billing.money import format_usd
from infermesh.billing.usage import (
    USAGE_ENDPOINTS,
    USAGE_STATUSES,
    UsageFilter,
    UsageLog,
    UsageRecord,
)
from infermesh.errors import InvalidRequest
from infermesh.gateway.dashboard.paging import cursor, given, page_link
from infermesh.gateway.dashboard.routing import account_viewer, dashboard_router
from infermesh.gateway.dashboard.web import PREFIX, render, secured
from infermesh.store import utcnow

router = dashboard_router()

PAGE_SIZE = 50
CSV_BATCH = PAGE_SIZE
"""Records read per query while streaming the CSV file."""
CSV_MAX_ROWS = 100_000
RANGES: dict[str, tuple[str, timedelta | None]] = {
    "all": ("All time", None),
    "hour": ("Last hour", timedelta(hours=1)),
    "24h": ("Last 24 hours", timedelta(days=1)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
"""First characters that make a spreadsheet read a cell as a formula (the last four:
the fullwidth forms of the first four, which some spreadsheets read the same way)."""
CSV_COLUMNS = (
    "created",
    "id",
    "request_id",
    "model",
    "endpoint",
    "key_id",
    "node_id",
    "stream",
    "status",
    "error_code",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "cost_micro_usd",
    "latency_ms",
)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """The page's filters as its form sends them (an empty field is no filter)."""

    model: str | None = None
    status: str | None = None
    endpoint: str | None = None
    key_id: str | None = None
    range: str | None = None

    @classmethod
    def of(cls, request: Request) -> UsageQuery:
        params = request.query_params
        return cls(**{field.name: given(params.get(field.name)) for field in fields(cls)})

    def matching(self, now: datetime) -> UsageFilter:
        """The filter of the usage log; :class:`InvalidRequest` for a value it cannot be."""
        if self.range is not None and self.range not in RANGES:
            raise InvalidRequest(
                f"range must be one of {', '.join(RANGES)}; not '{self.range[:50]}'.",
                param="range",
            )
        window = RANGES[self.range or "all"][1]
        return UsageFilter(
            model=self.model,
            status=self.status,
            endpoint=self.endpoint,
            key_id=self.key_id,
            since=None if window is None else now - window,
        )

    def link(self, path: str, **extra: str) -> str:
        """``path`` with these filters (and ``extra``) as its query string."""
        return page_link(path, {**asdict(self), **extra})


@router.get("/usage")
async def usage_page(request: Request) -> Response:
    """The account's requests, newest first, :data:`PAGE_SIZE` at a time."""
    page, principal = await account_viewer(request)
    query = UsageQuery.of(request)
    matching = query.matching(utcnow())
    after = cursor(request)
    services = page.services
    await services.billing.flush()
    records, has_more = await services.billing.usage.page(
        principal.account_id, limit=PAGE_SIZE, after=after, matching=matching
    )
    keys = await services.accounts.list_keys(principal.account_name)
    return render(
        request,
        "usage.html",
        session=page.session,
        records=records,
        query=query,
        next_link=query.link(f"{PREFIX}/usage", after=records[-1].id) if has_more else None,
        first_link=query.link(f"{PREFIX}/usage") if after is not None else None,
        csv_link=query.link(f"{PREFIX}/usage.csv"),
        statuses=USAGE_STATUSES,
        endpoints=USAGE_ENDPOINTS,
        ranges=RANGES,
        keys=keys,
        models=sorted(spec.id for spec in services.catalog),
        page_size=PAGE_SIZE,
        csv_max_rows=CSV_MAX_ROWS,
    )


@router.get("/usage.csv")
async def usage_csv(request: Request) -> Response:
    """Every record matching the page's filters (up to :data:`CSV_MAX_ROWS`), as CSV."""
    page, principal = await account_viewer(request)
    matching = UsageQuery.of(request).matching(utcnow())
    billing = page.services.billing
    await billing.flush()
    name = f"infermesh-usage-{utcnow():%Y%m%d-%H%M%S}.csv"
    response = StreamingResponse(
        _csv_chunks(billing.usage, principal.account_id, matching),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )
    return secured(response)


def csv_cell(value: str | int | bool | None) -> str:
    """``value`` as a CSV cell that no spreadsheet runs as a formula: text that starts
    like a formula gets a leading ``'``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def csv_values(record: UsageRecord) -> list[str]:
    """One record's cells, in the order of :data:`CSV_COLUMNS`."""
    values: tuple[str | int | bool | None, ...] = (
        record.created_at.isoformat(),
        record.id,
        record.request_id,
        record.model,
        record.endpoint,
        record.key_id,
        record.node_id,
        record.stream,
        record.status,
        record.error_code,
        record.finish_reason,
        record.prompt_tokens,
        record.completion_tokens,
        record.prompt_tokens + record.completion_tokens,
        format_usd(record.cost),
        record.cost,
        record.latency_ms,
    )
    return [csv_cell(value) for value in values]


async def _csv_chunks(
    usage: UsageLog, account_id: int, matching: UsageFilter
) -> AsyncIterator[str]:
    """The header, then one chunk per page of records, until none are left or the
    cap is reached."""
    yield _csv_text([list(CSV_COLUMNS)])
    written = 0
    after: str | None = None
    while written < CSV_MAX_ROWS:
        records, has_more = await usage.page(
            account_id,
            limit=min(CSV_BATCH, CSV_MAX_ROWS - written),
            after=after,
            matching=matching,
        )
        if records:
            yield _csv_text(csv_values(record) for record in records)
        written += len(records)
        if not has_more or not records:
            return
        after = records[-1].id


def _csv_text(rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()
