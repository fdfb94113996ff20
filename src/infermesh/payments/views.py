"""Deposits as the API shows them."""

from __future__ import annotations

from collections.abc import Sequence

from infermesh.billing.money import CreditUnit
from infermesh.billing.views import amount
from infermesh.payments.records import DepositRecord
from infermesh.protocol.payments import DepositList, DepositObject


def deposit_list(
    records: Sequence[DepositRecord], *, required_confirmations: int, unit: CreditUnit
) -> DepositList:
    """``records`` as ``{"object": "list", "data": [...]}``."""
    return DepositList(data=[_deposit(record, required_confirmations, unit) for record in records])


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
