"""The admin's Accounts pages: every account with its balance, and one account's page.

On an account's page the admin moves it to another tier, grants it credit (in USD,
with a reason and a reference: the same reference twice credits once, so a form sent
twice grants once), sets its own rate limits and revokes its keys. The same services
as ``/admin/accounts/…``, ``/admin/accounts/{name}/limits`` and the CLI.
"""

from __future__ import annotations

import secrets

from fastapi import Request, Response

from infermesh.accounts.records import AccountRecord
from infermesh.billing.admin import parse_amount
from infermesh.billing.ledger import DuplicateReference
from infermesh.errors import InvalidRequest, NotFound
from infermesh.gateway.dashboard.format import balance_money, usd_text
from infermesh.gateway.dashboard.owned import account_key
from infermesh.gateway.dashboard.pages._admin.limits import limit_changes, limit_rows
from infermesh.gateway.dashboard.paging import cursor, given, page_link
from infermesh.gateway.dashboard.routing import admin_viewer, dashboard_router
from infermesh.gateway.dashboard.web import PREFIX, Page, checked_form, redirect, render

router = dashboard_router()
ACCOUNTS = f"{PREFIX}/admin/accounts"
PAGE_SIZE = 50
LEDGER_ENTRIES = 20
_MAX_SEARCH = 200


@router.get("/admin/accounts")
async def accounts_page(request: Request) -> Response:
    """Accounts by name, :data:`PAGE_SIZE` at a time, those whose name contains ``q``."""
    page = await admin_viewer(request)
    search = given(request.query_params.get("q"))
    after = cursor(request)
    if len(search or "") > _MAX_SEARCH or len(after or "") > _MAX_SEARCH:
        raise InvalidRequest(f"Search for at most {_MAX_SEARCH} characters.", param="q")
    accounts, more = await page.services.credits.accounts(
        search=search, limit=PAGE_SIZE, after=after
    )
    last = accounts[-1].summary.account.name if more and accounts else None
    return render(
        request,
        "admin_accounts.html",
        session=page.session,
        accounts=accounts,
        search=search or "",
        next_link=page_link(ACCOUNTS, {"q": search, "after": last}) if last else None,
        first_link=page_link(ACCOUNTS, {"q": search}) if after is not None else None,
        notice=request.query_params.get("notice"),
    )


@router.get("/admin/accounts/{account_id}")
async def account_page(request: Request, account_id: str) -> Response:
    page = await admin_viewer(request)
    services = page.services
    account = await _account(page, account_id)
    statement = await services.credits.statement(account.name, entries=LEDGER_ENTRIES)
    return render(
        request,
        "admin_account.html",
        session=page.session,
        account=account,
        balance=balance_money(statement.balance, services.billing.unit),
        entries=statement.entries,
        tiers=sorted(services.billing.tiers.tiers()),
        limits=limit_rows(await services.limit_admin().show("account", account.name)),
        keys=await services.accounts.list_keys(account.name),
        reference=f"grant-{secrets.token_hex(8)}",
        notice=request.query_params.get("notice"),
    )


@router.post("/admin/accounts/{account_id}/tier")
async def set_tier(request: Request, account_id: str) -> Response:
    page = await admin_viewer(request)
    fields = await checked_form(request, page.session)
    account = await _account(page, account_id)
    tier = fields.get("tier", "").strip()
    known = page.services.billing.tiers.tiers()
    if tier not in known:
        raise InvalidRequest(
            f"Unknown tier '{tier[:50]}'; the tiers are {', '.join(sorted(known))}.",
            param="tier",
        )
    await page.services.accounts.set_tier(account.name, tier)
    return _back(account, f"{account.name} is now on the {tier} tier.")


@router.post("/admin/accounts/{account_id}/grants")
async def grant_credit(request: Request, account_id: str) -> Response:
    page = await admin_viewer(request)
    fields = await checked_form(request, page.session)
    account = await _account(page, account_id)
    amount = parse_amount(fields.get("amount_usd", ""))
    reference = given(fields.get("reference"))
    try:
        statement = await page.services.credits.grant(
            account.name, amount, reason=fields.get("reason", ""), reference=reference
        )
    except DuplicateReference:
        return _back(
            account,
            f"A grant with reference {reference} was already recorded: the account was "
            "credited once, not again.",
        )
    balance = usd_text(statement.balance.balance)
    return _back(account, f"Granted {usd_text(amount)} to {account.name}: balance {balance}.")


@router.post("/admin/accounts/{account_id}/limits")
async def set_limits(request: Request, account_id: str) -> Response:
    page = await admin_viewer(request)
    fields = await checked_form(request, page.session)
    account = await _account(page, account_id)
    await page.services.limit_admin().update("account", account.name, limit_changes(fields))
    return _back(account, f"Saved the rate limits of {account.name}.")


@router.post("/admin/accounts/{account_id}/keys/{key_id}/revoke")
async def revoke_key(request: Request, account_id: str, key_id: str) -> Response:
    page = await admin_viewer(request)
    await checked_form(request, page.session)
    account = await _account(page, account_id)
    key = await account_key(
        page.services, account.id, key_id, missing=f"{account.name} has no API key with this id."
    )
    await page.services.accounts.revoke_key(key.id)
    return _back(account, f"Revoked the key {key.prefix}… of {account.name}: it no longer works.")


async def _account(page: Page, account_id: str) -> AccountRecord:
    """The account of the page's address; NotFound for an id that is none."""
    if not account_id.isascii() or not account_id.isdigit() or len(account_id) > 18:
        raise NotFound("There is no account with this id.", param="account")
    return await page.services.accounts.get_account_by_id(int(account_id))


def _back(account: AccountRecord, notice: str) -> Response:
    return redirect(f"{ACCOUNTS}/{account.id}", notice=notice)
