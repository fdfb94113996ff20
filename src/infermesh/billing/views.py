"""Billing figures as the API and the CLI show them."""

from __future__ import annotations

from infermesh.billing.money import CreditUnit, format_usd
from infermesh.billing.usage import WorkerEarnings
from infermesh.protocol.credits import Amount, WorkerEarningsObject


def amount(micro: int, unit: CreditUnit) -> Amount:
    """``micro`` micro-USD, with USD and credits for display."""
    return Amount(micro_usd=micro, usd=format_usd(micro), credits=unit.credits(micro))


def earnings_object(row: WorkerEarnings, unit: CreditUnit) -> WorkerEarningsObject:
    """One worker's earnings row."""
    return WorkerEarningsObject(
        worker_id=row.worker_id,
        name=row.worker_name,
        operator=row.operator,
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        billed=amount(row.billed, unit),
        earned=amount(row.earned, unit),
    )
