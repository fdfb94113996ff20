"""The Overview page: an account's balance, its spend over time, its rate limits and
the models it can call.

The figures come from the services behind ``/v1/credits/balance``, ``/v1/limits`` and
``/v1/models``. Each chart is drawn in the browser (``static/charts.js``, uPlot) from
the numbers of the table under it, handed over in a ``data-`` attribute; without
JavaScript the table alone shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import Request, Response

from infermesh.accounts.records import Principal
from infermesh.billing.money import usd
from infermesh.billing.usage import SeriesBucket, SpendPoint, UsageTotals
from infermesh.gateway.dashboard.format import Money, balance_money, money, usd_text
from infermesh.gateway.dashboard.routing import account_viewer, dashboard_router
from infermesh.gateway.dashboard.web import render
from infermesh.gateway.routes.models import model_object
from infermesh.gateway.state import Services
from infermesh.limits.admin import state_objects
from infermesh.limits.headers import readable_duration
from infermesh.limits.store import LimiterUnavailable
from infermesh.protocol.limits import LimitObject
from infermesh.protocol.models import ModelObject
from infermesh.store import utcnow

router = dashboard_router()

PERIODS: tuple[tuple[str, timedelta, SeriesBucket], ...] = (
    ("Last 24 hours", timedelta(days=1), "hour"),
    ("Last 30 days", timedelta(days=30), "day"),
)
LIMIT_LABELS = {
    "requests_per_minute": "Requests per minute",
    "tokens_per_minute": "Tokens per minute",
    "tokens_per_day": "Tokens per day",
    "concurrent_requests": "Requests at once",
}
SCOPE_LABELS = {"account": "Account", "key": "This key"}


@dataclass(frozen=True, slots=True)
class Period:
    """Usage over one period, and the chart of it by hour or by day."""

    label: str
    bucket: SeriesBucket
    requests: int
    prompt_tokens: int
    completion_tokens: int
    spend: Money
    points: list[SeriesRow]
    chart: dict[str, Any]

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """One hour or day of a chart's table."""

    start: datetime
    requests: int
    tokens: int
    cost: str


@dataclass(frozen=True, slots=True)
class LimitRow:
    """One rate limit in force, with what is left of it."""

    scope: str
    name: str
    limit: int | None
    remaining: int | None
    detail: str


@router.get("/overview")
async def overview(request: Request) -> Response:
    page, principal = await account_viewer(request)
    services = page.services
    unit = services.billing.unit
    # First: it writes this gateway's settlements, which the usage figures then include.
    balance = await services.billing.balance(principal.account_id)
    now = utcnow()
    periods = [
        await _period(services, principal, label, span, bucket, now)
        for label, span, bucket in PERIODS
    ]
    limits = await _limits(services, principal)
    return render(
        request,
        "overview.html",
        session=page.session,
        account=principal.account_name,
        tier=principal.tier,
        balance=balance_money(balance, unit),
        credit_usd=usd_text(unit.micro_per_credit),
        periods=periods,
        limits=limits,
        models=_models(services),
        notice=request.query_params.get("notice"),
    )


async def _period(
    services: Services,
    principal: Principal,
    label: str,
    span: timedelta,
    bucket: SeriesBucket,
    now: datetime,
) -> Period:
    usage = services.billing.usage
    since = now - span
    totals: UsageTotals = await usage.totals(principal.account_id, since=since)
    series = await usage.spend_series(principal.account_id, since=since, bucket=bucket, until=now)
    return Period(
        label=label,
        bucket=bucket,
        requests=totals.requests,
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        spend=money(totals.cost, services.billing.unit),
        points=[_series_row(point) for point in series],
        chart=_chart(bucket, series),
    )


def _series_row(point: SpendPoint) -> SeriesRow:
    return SeriesRow(point.start, point.requests, point.tokens, usd_text(point.cost))


def _chart(bucket: SeriesBucket, series: list[SpendPoint]) -> dict[str, Any]:
    """What ``overview.js`` draws: times in seconds, cost in USD (and as written)."""
    return {
        "bucket": bucket,
        "time": [int(point.start.timestamp()) for point in series],
        "cost": [usd(point.cost) for point in series],
        "costText": [usd_text(point.cost) for point in series],
        "requests": [point.requests for point in series],
        "tokens": [point.tokens for point in series],
    }


async def _limits(services: Services, principal: Principal) -> list[LimitRow] | None:
    """The limits ``principal`` is held to; None when the limit store cannot say."""
    try:
        states = await services.limits.status(principal)
    except LimiterUnavailable:
        return None
    return [
        _limit_row(scope, name, entry)
        for scope in SCOPE_LABELS
        for name, entry in state_objects(states, scope).items()
    ]


def _limit_row(scope: str, name: str, entry: LimitObject) -> LimitRow:
    if entry.in_use is not None:
        detail = f"{entry.in_use:,} running now"
    elif entry.reset_seconds and entry.remaining is not None and entry.remaining != entry.limit:
        detail = f"full again in {readable_duration(entry.reset_seconds)}"
    else:
        detail = ""
    return LimitRow(
        scope=SCOPE_LABELS[scope],
        name=LIMIT_LABELS.get(name, name),
        limit=entry.limit,
        remaining=entry.remaining,
        detail=detail,
    )


def _models(services: Services) -> list[ModelObject]:
    return [model_object(spec, services.registry) for spec in services.catalog]
