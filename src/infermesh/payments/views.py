"""Deposits, payouts and earnings as the API shows them."""

from __future__ import annotations

from collections.abc import Sequence

from infermesh.billing.money import CreditUnit
from infermesh.billing.views import amount
from infermesh.payments.payouts import EarningsRecord, PayoutRecord, RunReport
from infermesh.payments.records import DepositRecord
from infermesh.protocol.payments import (
    DepositList,
    DepositObject,
    EarningsObject,
    PayoutObject,
    PayoutRunObject,
)


def deposit_list(
    records: Sequence[DepositRecord],
    *,
    required_confirmations: int,
    unit: CreditUnit,
    has_more: bool = False,
) -> DepositList:
    """``records`` as ``{"object": "list", "data": [...], "has_more", "last_id"}``."""
    data = [_deposit(record, required_confirmations, unit) for record in records]
    return DepositList(data=data, has_more=has_more, last_id=data[-1].id if data else None)


def _deposit(record: DepositRecord, required: int, unit: CreditUnit) -> DepositObject:
    return DepositObject(
        id=record.id,
        tx_hash=record.tx_hash,
        log_index=record.log_index,
        amount=amount(record.amount, unit),
        status=record.status,
        confirmations=record.confirmations,
        required_confirmations=required,
        error=record.error,
        created=int(record.created_at.timestamp()),
        credited=int(record.credited_at.timestamp()) if record.credited_at else None,
    )


def payout_object(record: PayoutRecord, unit: CreditUnit) -> PayoutObject:
    return PayoutObject(
        id=record.id,
        account=record.account,
        address=record.address,
        amount=amount(record.amount, unit),
        status=record.status,
        tx_hash=record.tx_hash,
        error=record.error,
        created=int(record.created_at.timestamp()),
        paid=int(record.paid_at.timestamp()) if record.paid_at else None,
    )


def earnings_view(record: EarningsRecord, unit: CreditUnit) -> EarningsObject:
    return EarningsObject(
        account=record.account,
        payout_wallet=record.wallet,
        earned=amount(record.earned, unit),
        paid=amount(record.paid, unit),
        pending=amount(record.pending, unit),
        unpaid=amount(record.unpaid, unit),
        payable=amount(record.payable, unit),
        minimum=amount(record.minimum, unit),
        payouts=[payout_object(p, unit) for p in record.payouts],
    )


def run_view(report: RunReport, unit: CreditUnit) -> PayoutRunObject:
    return PayoutRunObject(
        sent=[payout_object(p, unit) for p in report.sent],
        skipped=[{"account": name, "reason": why} for name, why in report.skipped],
    )
