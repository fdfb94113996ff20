"""``GET /v1/credits/balance``, ``GET /v1/usage`` and ``GET /v1/usage/{id}``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from infermesh.billing.money import CreditUnit, format_usd
from infermesh.billing.usage import UsageFilter, UsageRecord, UsageTotals
from infermesh.billing.views import amount
from infermesh.gateway.deps import PrincipalDep, ServicesDep
from infermesh.protocol.credits import (
    CreditBalance,
    RecentUsage,
    UsagePage,
    UsageRecordObject,
)
from infermesh.protocol.credits import UsageTotals as UsageTotalsObject
from infermesh.store import utcnow

router = APIRouter()
LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z: later times are not dates
UnixTime = Annotated[int | None, Query(ge=0, le=LAST_SECOND)]


@router.get("/v1/credits/balance")
async def credit_balance(principal: PrincipalDep, services: ServicesDep) -> CreditBalance:
    """The caller's balance, the part held by requests in flight, and recent usage."""
    billing = services.billing
    balance = await billing.balance(principal.account_id)
    now = utcnow()
    day = await billing.usage.totals(principal.account_id, since=now - timedelta(days=1))
    month = await billing.usage.totals(principal.account_id, since=now - timedelta(days=30))
    unit = billing.unit
    return CreditBalance(
        account=principal.account_name,
        tier=principal.tier,
        balance=amount(balance.balance, unit),
        held=amount(balance.held, unit),
        available=amount(balance.available, unit),
        credit_usd=format_usd(unit.micro_per_credit),
        usage=RecentUsage(last_24h=_totals(day, unit), last_30d=_totals(month, unit)),
    )


@router.get("/v1/usage")
async def list_usage(
    principal: PrincipalDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=100)] = None,
    model: str | None = None,
    status: str | None = None,
    endpoint: str | None = None,
    key_id: str | None = None,
    since: UnixTime = None,
    until: UnixTime = None,
) -> UsagePage:
    """The caller's requests, newest first: counts, cost, worker, status, latency.

    Each filter given narrows the list: ``model``, ``status`` (succeeded, failed,
    cancelled), ``endpoint``, ``key_id``, and ``since`` (inclusive) / ``until``
    (exclusive) in Unix seconds.
    """
    matching = UsageFilter(
        model=model,
        status=status,
        endpoint=endpoint,
        key_id=key_id,
        since=_moment(since),
        until=_moment(until),
    )
    await services.billing.flush()
    records, has_more = await services.billing.usage.page(
        principal.account_id, limit=limit, after=after, matching=matching
    )
    unit = services.billing.unit
    data = [_record(record, unit) for record in records]
    return UsagePage(data=data, has_more=has_more, last_id=data[-1].id if data else None)


@router.get("/v1/usage/{record_id}")
async def get_usage(
    record_id: str, principal: PrincipalDep, services: ServicesDep
) -> UsageRecordObject:
    """One request, by its completion id (``chatcmpl-…``) or its ``x-request-id``."""
    await services.billing.flush()
    record = await services.billing.usage.get(principal.account_id, record_id)
    return _record(record, services.billing.unit)


def _moment(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _totals(totals: UsageTotals, unit: CreditUnit) -> UsageTotalsObject:
    return UsageTotalsObject(
        requests=totals.requests,
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        cost=amount(totals.cost, unit),
    )


def _record(record: UsageRecord, unit: CreditUnit) -> UsageRecordObject:
    return UsageRecordObject(
        id=record.id,
        request_id=record.request_id,
        created=int(record.created_at.timestamp()),
        model=record.model,
        key_id=record.key_id,
        node_id=record.node_id,
        stream=record.stream,
        status=record.status,
        error_code=record.error_code,
        finish_reason=record.finish_reason,
        endpoint=record.endpoint,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        total_tokens=record.prompt_tokens + record.completion_tokens,
        cost=amount(record.cost, unit),
        latency_ms=record.latency_ms,
    )
