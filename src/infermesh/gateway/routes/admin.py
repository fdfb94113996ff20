"""``/admin/…``: accounts, tiers, grants and operator earnings, behind the admin key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from infermesh.billing.admin import Statement, parse_amount
from infermesh.billing.views import amount, earnings_object
from infermesh.errors import InvalidRequest
from infermesh.gateway.deps import AdminDep, ServicesDep
from infermesh.gateway.state import Services
from infermesh.protocol.credits import AccountCredits, GrantRequest, LedgerEntryObject, TierUpdate

router = APIRouter(prefix="/admin", dependencies=[AdminDep])


@router.get("/accounts/{name}")
async def show_account(
    name: str, services: ServicesDep, entries: Annotated[int, Query(ge=1, le=200)] = 20
) -> AccountCredits:
    """An account's tier, balance and newest ledger entries."""
    return _account(await services.credits.statement(name, entries=entries), services)


@router.post("/accounts/{name}/grants")
async def grant_credits(name: str, grant: GrantRequest, services: ServicesDep) -> AccountCredits:
    """Add credit to an account (in USD or micro-USD); a ``reference`` makes it idempotent."""
    statement = await services.credits.grant(
        name, _grant_amount(grant), reason=grant.reason, reference=grant.reference
    )
    return _account(statement, services)


@router.patch("/accounts/{name}")
async def update_account(name: str, update: TierUpdate, services: ServicesDep) -> AccountCredits:
    """Move an account to another tier (one the gateway's tier policy names)."""
    known = services.billing.tiers.tiers()
    if update.tier not in known:
        raise InvalidRequest(
            f"Unknown tier '{update.tier}'; the tiers are {', '.join(sorted(known))}.",
            param="tier",
        )
    await services.accounts.set_tier(name, update.tier)
    return _account(await services.credits.statement(name), services)


@router.get("/workers/earnings")
async def worker_earnings(
    services: ServicesDep, operator: Annotated[str | None, Query(max_length=200)] = None
) -> dict[str, Any]:
    """Per registered worker: requests billed, tokens, amount billed and earned."""
    await services.billing.flush()
    rows = await services.billing.usage.earnings(operator=operator)
    unit = services.billing.unit
    return {"object": "list", "data": [earnings_object(row, unit).model_dump() for row in rows]}


def _grant_amount(grant: GrantRequest) -> int:
    if (grant.amount_usd is None) == (grant.amount_micro_usd is None):
        raise InvalidRequest("Give exactly one of amount_usd and amount_micro_usd.", param="amount")
    if grant.amount_micro_usd is not None:
        return grant.amount_micro_usd
    assert grant.amount_usd is not None
    return parse_amount(grant.amount_usd)


def _account(statement: Statement, services: Services) -> AccountCredits:
    unit = services.billing.unit
    balance = statement.balance
    return AccountCredits(
        id=statement.account.id,
        name=statement.account.name,
        tier=statement.account.tier,
        balance=amount(balance.balance, unit),
        held=amount(balance.held, unit),
        available=amount(balance.available, unit),
        entries=[
            LedgerEntryObject(
                id=entry.id,
                kind=entry.kind,
                balance_change=entry.balance_change,
                held_change=entry.held_change,
                balance_after=entry.balance_after,
                reference=entry.reference,
                reason=entry.reason,
                created=int(entry.created_at.timestamp()),
            )
            for entry in statement.entries
        ],
    )
