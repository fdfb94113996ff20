"""USDC payments: ``/v1/credits/topup`` (by transaction hash, permit or x402 payment),
``/v1/credits/deposits``, an operator's ``/v1/payouts``, and ``/admin/payouts``.
Each needs a key (the admin key for ``/admin``) and payments configured."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Annotated

from eth_utils.address import to_checksum_address
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from infermesh.billing.ledger import MAX_GRANT
from infermesh.billing.money import format_usd, parse_usd
from infermesh.billing.views import amount
from infermesh.errors import InvalidRequest, ServiceUnavailable
from infermesh.gateway.deps import AdminDep, PrincipalDep, ServicesDep
from infermesh.gateway.state import Services
from infermesh.payments.permits import MIN_PERMIT_WINDOW, PermitTopups
from infermesh.payments.records import DepositRecord
from infermesh.payments.setup import PaymentParts
from infermesh.payments.views import deposit_list, earnings_view, payout_object, run_view
from infermesh.payments.x402 import Settlement, X402Topups, parse_payment
from infermesh.protocol.payments import (
    DepositList,
    EarningsObject,
    PayoutRunObject,
    PayoutWalletRequest,
    TokenObject,
    TopupOptions,
    TopupRequest,
    X402PaymentRequired,
    X402Requirements,
    X402SettlementResponse,
)

router = APIRouter()
admin_router = APIRouter(prefix="/admin", dependencies=[AdminDep])


@router.get("/v1/credits/topup")
async def topup_options(services: ServicesDep) -> TopupOptions:
    """Where to send USDC, whom a permit names as spender, and the token's domain."""
    payments = _payments(services)
    options = payments.deposits.options
    return TopupOptions(
        token=TokenObject(
            address=options.usdc,
            chain_id=options.chain_id,
            name=options.usdc_name,
            version=options.usdc_version,
        ),
        treasury=options.treasury,
        relayer=payments.permits.relayer.address if payments.permits else None,
        min_deposit=amount(options.min_deposit, services.billing.unit),
        confirmations=options.confirmations,
        min_permit_window=MIN_PERMIT_WINDOW,
        x402=payments.x402 is not None,
    )


@router.post("/v1/credits/topup", response_model=DepositList)
async def topup(
    body: TopupRequest,
    principal: PrincipalDep,
    services: ServicesDep,
    request: Request,
    response: Response,
    x_payment: Annotated[str | None, Header()] = None,
) -> DepositList | Response:
    """Top up with USDC: claim a transfer to the treasury sent from the caller's wallet
    (``tx_hash``), or hand the relayer a permit to make it (``permit``), or (x402 on)
    ask for an ``amount``, answered 402 with x402's payment requirements, and post it
    again with an ``X-PAYMENT`` header. Credit comes once the transfer has enough
    confirmations."""
    payments = _payments(services)
    if x_payment is not None:
        return await _pay(body, x_payment, principal.account_id, services, payments, response)
    if body.tx_hash is None and body.permit is None and payments.x402 is not None:
        return _payment_required(body, payments.x402, request)
    if (body.tx_hash is None) == (body.permit is None):
        raise InvalidRequest(
            "Give exactly one of 'tx_hash' (a transfer you sent to the treasury) and "
            "'permit' (an EIP-2612 permit for the relayer).",
            param="tx_hash",
        )
    deposits = payments.deposits
    if body.tx_hash is not None:
        records = await deposits.claim(principal.account_id, body.tx_hash)
    else:
        assert body.permit is not None
        permits = _permits(payments)
        relayed = await permits.submit(principal.account_id, await permits.permit_of(body.permit))
        records = await deposits.records(principal.account_id, claim_id=relayed.claim_id)
    return _list(services, payments, records)


@router.get("/v1/credits/deposits")
async def list_deposits(
    principal: PrincipalDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> DepositList:
    """The caller's deposits, newest transaction first, ``limit`` transactions at a
    time (``after``: the ``last_id`` of the previous page)."""
    payments = _payments(services)
    records, has_more = await payments.deposits.page(principal.account_id, limit=limit, after=after)
    return _list(services, payments, records, has_more=has_more)


@router.post("/v1/payouts/wallet")
async def bind_payout_wallet(
    body: PayoutWalletRequest, principal: PrincipalDep, services: ServicesDep
) -> EarningsObject:
    """Be paid to the wallet that signed ``message`` (EIP-4361, a nonce from
    ``GET /v1/auth/wallet/nonce``); the caller's earnings after."""
    payments = _payments(services)
    address = await services.wallets.prove(body.message, body.signature)
    await payments.payouts.bind_wallet(principal.account_id, address)
    return await _earnings(services, payments, principal.account_id)


@router.get("/v1/payouts")
async def operator_earnings(principal: PrincipalDep, services: ServicesDep) -> EarningsObject:
    """The caller's earnings as an operator: earned, paid, pending, owed; its payouts."""
    payments = _payments(services)
    return await _earnings(services, payments, principal.account_id)


@admin_router.post("/payouts/run")
async def run_payouts(services: ServicesDep) -> PayoutRunObject:
    """Pay every operator owed at least the minimum, one transfer each (as
    ``infermesh payouts run``)."""
    payments = _payments(services)
    if not payments.payouts.can_pay:
        raise ServiceUnavailable(
            "Payouts need the treasury's key: set INFERMESH_PAYMENTS_TREASURY_KEY.",
            code="payouts_disabled",
        )
    await services.billing.flush()
    return run_view(await payments.payouts.run(), services.billing.unit)


@admin_router.get("/payouts")
async def list_payouts(
    services: ServicesDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, object]:
    """The newest payouts of all operators."""
    payments = _payments(services)
    unit = services.billing.unit
    rows = await payments.payouts.recent(limit=limit)
    return {"object": "list", "data": [payout_object(r, unit).model_dump() for r in rows]}


def _payments(services: Services) -> PaymentParts:
    if services.payments is None:
        raise ServiceUnavailable(
            "USDC payments are not enabled on this gateway: its operator must set "
            "INFERMESH_PAYMENTS_RPC_URL, INFERMESH_PAYMENTS_USDC_ADDRESS and "
            "INFERMESH_PAYMENTS_TREASURY.",
            code="payments_disabled",
        )
    return services.payments


def _permits(payments: PaymentParts) -> PermitTopups:
    if payments.permits is None:
        raise ServiceUnavailable(
            "Permit top-ups are not enabled on this gateway (it has no relayer); send "
            "USDC to the treasury and post the transaction hash instead.",
            code="permits_disabled",
        )
    return payments.permits


def _x402(payments: PaymentParts) -> X402Topups:
    if payments.x402 is None:
        raise ServiceUnavailable(
            "x402 payments are not enabled on this gateway; send USDC to the treasury and "
            "post the transaction hash instead.",
            code="x402_disabled",
        )
    return payments.x402


def _payment_required(body: TopupRequest, x402: X402Topups, request: Request) -> JSONResponse:
    """x402's 402: what a top-up of the requested amount must pay."""
    asked = _amount(body)
    if asked is None:
        raise InvalidRequest(
            "Give the 'amount' to top up (USD, e.g. \"5\") to be answered with x402's "
            "payment requirements, or 'tx_hash' or 'permit'.",
            param="amount",
        )
    needed = x402.requirements(asked)
    offer = X402PaymentRequired(
        error="X-PAYMENT header is required",
        accepts=[
            X402Requirements(
                network=needed.network,
                maxAmountRequired=str(needed.amount),
                resource=str(request.url),
                description=f"Top up {format_usd(needed.amount)} USD of credit on this account",
                payTo=to_checksum_address(needed.pay_to),
                maxTimeoutSeconds=needed.max_timeout_seconds,
                asset=to_checksum_address(needed.asset),
                extra={"name": needed.name, "version": needed.version},
            )
        ],
    )
    return JSONResponse(offer.model_dump(mode="json"), status_code=402)


async def _pay(
    body: TopupRequest,
    header: str,
    account_id: int,
    services: Services,
    payments: PaymentParts,
    response: Response,
) -> DepositList:
    """Settle the ``X-PAYMENT``; its deposit, and ``X-PAYMENT-RESPONSE`` to say so."""
    x402 = _x402(payments)
    if body.tx_hash is not None or body.permit is not None:
        raise InvalidRequest(
            "An X-PAYMENT header pays by itself: post it without 'tx_hash' or 'permit'.",
            param="X-PAYMENT",
        )
    settlement = await x402.settle(account_id, parse_payment(header), _amount(body))
    response.headers["X-PAYMENT-RESPONSE"] = _settlement_header(settlement)
    records = await payments.deposits.records(account_id, claim_id=settlement.claim_id)
    return _list(services, payments, records)


def _settlement_header(settlement: Settlement) -> str:
    """x402's settlement response, as base64 of its JSON. ``success``: submitted (the
    deposit is credited after its confirmations)."""
    answer = X402SettlementResponse(
        success=True,
        transaction=settlement.transaction,
        network=settlement.network,
        payer=to_checksum_address(settlement.payer),
    )
    return base64.b64encode(answer.model_dump_json().encode()).decode()


def _amount(body: TopupRequest) -> int | None:
    """The x402 amount asked, in micro-USD (None: none named)."""
    if body.amount is not None and body.amount_micro_usd is not None:
        raise InvalidRequest("Give 'amount' (USD) or 'amount_micro_usd', not both.", param="amount")
    if body.amount is None:
        return body.amount_micro_usd
    try:
        return parse_usd(body.amount, maximum=Decimal(MAX_GRANT))
    except ValueError as exc:
        raise InvalidRequest(f"'amount': {exc}.", param="amount") from None


def _list(
    services: Services,
    payments: PaymentParts,
    records: list[DepositRecord],
    *,
    has_more: bool = False,
) -> DepositList:
    return deposit_list(
        records,
        required_confirmations=payments.deposits.options.confirmations,
        unit=services.billing.unit,
        has_more=has_more,
    )


async def _earnings(services: Services, payments: PaymentParts, account_id: int) -> EarningsObject:
    await services.billing.flush()
    record = await payments.payouts.earnings(account_id)
    return earnings_view(record, services.billing.unit)
