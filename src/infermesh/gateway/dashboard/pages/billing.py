"""The Billing page: an account's balance, its USDC deposits (live while any is under
way), topping up with USDC, and its ledger.

Top-ups go through the services behind ``/v1/credits/topup``: by EIP-2612 permit (the
page's script, ``static/wallet.js``, gets the typed data to sign from
``GET /dashboard/billing/permit``, has the browser's wallet sign it and posts it back
with the session's CSRF token; the relayer sends it), or by the hash of a transfer the
account's wallet sent to the treasury (a plain form). The balance, the deposits and the
ledger are also served alone, as a fragment of the page that ``static/billing.js``
fetches every few seconds while a deposit is not final. Without payments configured the
page shows the balance and the ledger only.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from eth_utils.address import to_checksum_address
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from infermesh.accounts.records import Principal
from infermesh.billing.ledger import MAX_GRANT
from infermesh.billing.money import MICRO_PER_USD, parse_usd
from infermesh.billing.statement import AccountStatement
from infermesh.errors import InvalidRequest, ServiceUnavailable
from infermesh.gateway.dashboard.format import balance_money, usd_text
from infermesh.gateway.dashboard.paging import page_link
from infermesh.gateway.dashboard.routing import account_viewer, dashboard_router
from infermesh.gateway.dashboard.web import PREFIX, Page, checked_form, redirect, render, secured
from infermesh.gateway.errors import invalid_request_from
from infermesh.payments.permits import PermitTopups
from infermesh.payments.records import FINAL_DEPOSIT
from infermesh.payments.setup import PaymentParts
from infermesh.protocol.payments import PermitBody

router = dashboard_router()
BILLING = f"{PREFIX}/billing"
DEPOSITS_PAGE = 10
LEDGER_PAGE = 25
FINAL_STATUSES = (*FINAL_DEPOSIT, "expired")
PERMIT_FIELDS = ("owner", "spender", "value", "nonce", "deadline", "signature")
LEDGER_LABELS = {
    "grant": "Grant",
    "deposit": "USDC top-up",
    "charge": "Requests",
    "earning": "Earnings as an operator",
    "payout": "Payout",
    "payout_refund": "Payout returned",
}


@dataclass(frozen=True, slots=True)
class Paging:
    """Where the deposits and the ledger are paged to (the page's query)."""

    deposits_after: str | None = None
    ledger_before: int | None = None

    @classmethod
    def of(cls, request: Request) -> Paging:
        params = request.query_params
        after = (params.get("deposits_after") or "").strip()[:40] or None
        before = (params.get("ledger_before") or "").strip()
        if before and not before.isdigit():
            raise InvalidRequest("ledger_before must be a whole number.", param="ledger_before")
        return cls(after, int(before) if before else None)

    def link(self, path: str, **changes: str | int | None) -> str:
        """``path`` with this paging and ``changes`` as its query."""
        return page_link(
            path,
            {"deposits_after": self.deposits_after, "ledger_before": self.ledger_before, **changes},
        )


@dataclass(frozen=True, slots=True)
class Topup:
    """How this account can top up: from its ``wallet`` (None: it has none), by permit
    to the relayer (when the gateway has one) or by a transfer to the treasury."""

    wallet: str | None
    treasury: str
    token: str
    chain_id: int
    confirmations: int
    min_deposit: str
    relayer: str | None


@router.get("/billing")
async def billing_page(request: Request) -> Response:
    page, principal = await account_viewer(request)
    paging = Paging.of(request)
    payments = page.services.payments
    return render(
        request,
        "billing.html",
        session=page.session,
        topup=await _topup(payments, principal) if payments is not None else None,
        live_url=paging.link(f"{BILLING}/live"),
        notice=request.query_params.get("notice"),
        **await _figures(page, principal, paging),
    )


@router.get("/billing/live")
async def billing_live(request: Request) -> Response:
    """The balance, the deposits and the ledger alone, as the page shows them."""
    page, principal = await account_viewer(request)
    return await _live_fragment(page, principal, Paging.of(request))


@router.get("/billing/permit")
async def permit_to_sign(request: Request) -> Response:
    """The typed data of a permit of ``amount`` USD(C) for the account's wallet to sign."""
    page, principal = await account_viewer(request)
    permits = _permits(page)
    try:
        value = parse_usd(
            request.query_params.get("amount", ""), maximum=Decimal(MAX_GRANT // MICRO_PER_USD)
        )
    except ValueError as exc:
        raise InvalidRequest(f"Amount: {exc}.", param="amount") from None
    return secured(JSONResponse(await permits.to_sign(principal.account_id, value)))


@router.post("/billing/permit")
async def permit_topup(request: Request) -> Response:
    """Relay a permit the account's wallet signed; the page's live fragment after."""
    page, principal = await account_viewer(request)
    fields = await checked_form(request, page.session)
    permits = _permits(page)
    given = {name: fields[name] for name in PERMIT_FIELDS if fields.get(name)}
    try:
        body = PermitBody.model_validate(given)
    except ValidationError as exc:
        raise invalid_request_from(list(exc.errors())) from None
    await permits.submit(principal.account_id, await permits.permit_of(body))
    return await _live_fragment(page, principal, Paging())


@router.post("/billing/claim")
async def claim_transfer(request: Request) -> Response:
    """Claim a transfer the account's wallet sent to the treasury (by its hash)."""
    page, principal = await account_viewer(request)
    fields = await checked_form(request, page.session)
    payments = _payments(page)
    records = await payments.deposits.claim(principal.account_id, fields.get("tx_hash", ""))
    needed = payments.deposits.options.confirmations
    tx_hash = records[0].tx_hash if records else fields.get("tx_hash", "")
    return redirect(
        BILLING,
        notice=f"Claimed the transaction {tx_hash[:10]}…: its USDC is credited once it has "
        f"{needed} confirmations.",
    )


async def _live_fragment(page: Page, principal: Principal, paging: Paging) -> Response:
    return render(
        page.request,
        "billing_live.html",
        session=page.session,
        **await _figures(page, principal, paging),
    )


async def _figures(page: Page, principal: Principal, paging: Paging) -> dict[str, Any]:
    """What the page and its live fragment show: balance, deposits, ledger.

    The deposits are read first, then the ledger and the balance: a deposit is credited
    in the same transaction as its ledger entry, so one the page shows credited is
    always in the ledger and the balance it shows (read the other way round, a credit
    landing in between would show "credited" beside a ledger without it)."""
    services = page.services
    figures: dict[str, Any] = {"deposits": None}
    if services.payments is not None:
        figures.update(await _deposits(services.payments, principal, paging))
    lines, older = await AccountStatement(services.database).page(
        principal.account_id, limit=LEDGER_PAGE, before=paging.ledger_before
    )
    balance = await services.billing.balance(principal.account_id)
    figures.update(
        {
            "balance": balance_money(balance, services.billing.unit),
            "ledger": lines,
            "labels": LEDGER_LABELS,
            "older_ledger": paging.link(BILLING, ledger_before=older) if older else None,
            "newest_ledger": (
                paging.link(BILLING, ledger_before=None) if paging.ledger_before else None
            ),
        }
    )
    return figures


async def _deposits(payments: PaymentParts, principal: Principal, paging: Paging) -> dict[str, Any]:
    deposits = payments.deposits
    records, more = await deposits.page(
        principal.account_id, limit=DEPOSITS_PAGE, after=paging.deposits_after
    )
    return {
        "deposits": records,
        "required": deposits.options.confirmations,
        "pending": any(record.status not in FINAL_STATUSES for record in records),
        "older_deposits": paging.link(BILLING, deposits_after=records[-1].id) if more else None,
        "newest_deposits": (
            paging.link(BILLING, deposits_after=None) if paging.deposits_after else None
        ),
    }


async def _topup(payments: PaymentParts, principal: Principal) -> Topup:
    """How the account can top up (addresses checksummed, as wallets show them)."""
    options = payments.deposits.options
    wallet = await payments.deposits.wallet_of(principal.account_id)
    permits = payments.permits
    return Topup(
        wallet=to_checksum_address(wallet) if wallet is not None else None,
        treasury=to_checksum_address(options.treasury),
        token=to_checksum_address(options.usdc),
        chain_id=options.chain_id,
        confirmations=options.confirmations,
        min_deposit=usd_text(options.min_deposit),
        relayer=to_checksum_address(permits.relayer.address) if permits is not None else None,
    )


def _payments(page: Page) -> PaymentParts:
    if page.services.payments is None:
        raise ServiceUnavailable(
            "USDC top-ups are not enabled on this gateway.", code="payments_disabled"
        )
    return page.services.payments


def _permits(page: Page) -> PermitTopups:
    permits = _payments(page).permits
    if permits is None:
        raise ServiceUnavailable(
            "Permit top-ups are not enabled on this gateway (it has no relayer); send USDC "
            "to the treasury and claim the transaction by its hash instead.",
            code="permits_disabled",
        )
    return permits
