"""An account's statement on SQLite and PostgreSQL: grants, deposits and payouts a line
each, charges and earnings summed per UTC day, holds left out, paged without gaps or
repeats."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from infermesh.billing.ledger import CreditLedger
from infermesh.billing.records import Earning, Settlement, UsageRow
from infermesh.billing.statement import AccountStatement, StatementLine
from infermesh.store import Database
from tests.billing.conftest import NewAccount
from tests.support.clock import Clock

DAY_ONE = datetime(2030, 1, 1, 23, 59, 59, 900_000, tzinfo=UTC)


async def charge(
    ledger: CreditLedger, account_id: int, name: str, cost: int, operator: int | None = None
) -> None:
    """Settle the request ``name`` at ``cost`` (no hold: a "late" charge)."""
    earning = Earning(operator, 5_000) if operator is not None else None
    usage = UsageRow(name, account_id, f"req-{name}", "m", "ok", DAY_ONE)
    await ledger.settle(Settlement(name, account_id, cost, earning, usage))


async def read_all(statement: AccountStatement, account_id: int, limit: int) -> list[StatementLine]:
    """Every line, a page of ``limit`` at a time."""
    lines: list[StatementLine] = []
    before: int | None = None
    while True:
        page, before = await statement.page(account_id, limit=limit, before=before)
        assert len(page) <= limit
        lines += page
        if before is None:
            return lines


async def test_the_statement_sums_charges_and_earnings_by_utc_day(
    database: Database, ledger: CreditLedger, clock: Clock, new_account: NewAccount
) -> None:
    user, operator = await new_account("user"), await new_account("operator")
    clock.now = DAY_ONE
    await ledger.credit(user, 10_000_000, kind="grant", reference="g1", reason="welcome")
    await charge(ledger, user, "a", 100_000, operator)
    await charge(ledger, user, "b", 200_000, operator)
    await ledger.hold(user, "held", 50_000, ttl=timedelta(hours=1))
    clock.advance(0.2)  # the next UTC day, by a fifth of a second
    await charge(ledger, user, "c", 300_000, operator)
    await ledger.credit(user, 5_000_000, kind="deposit", reference="d1", reason="USDC deposit")
    await charge(ledger, user, "d", 400_000)

    statement = AccountStatement(database)
    lines, more = await statement.page(user)
    assert more is None
    assert [(line.kind, line.amount, line.entries, line.day) for line in lines] == [
        ("charge", -700_000, 2, date(2030, 1, 2)),
        ("deposit", 5_000_000, 1, None),
        ("charge", -300_000, 2, date(2030, 1, 1)),
        ("grant", 10_000_000, 1, None),
    ]
    assert [line.balance_after for line in lines] == [14_000_000, 14_400_000, 9_700_000, 10_000_000]
    assert lines[-1].reason == "welcome" and lines[-1].reference == "g1"
    assert lines[0].created_at == clock.now

    earned, _ = await statement.page(operator)
    assert [(line.kind, line.amount, line.entries) for line in earned] == [
        ("earning", 150_000, 1),
        ("earning", 150_000, 2),
    ]


async def test_pages_follow_each_other_without_gaps_or_repeats(
    database: Database, ledger: CreditLedger, clock: Clock, new_account: NewAccount
) -> None:
    user = await new_account("paged")
    for day in range(4):
        await ledger.credit(user, 1_000_000, kind="grant", reference=f"g{day}", reason=None)
        await charge(ledger, user, f"r{day}-1", 10_000)
        await charge(ledger, user, f"r{day}-2", 10_000)
        clock.advance(86_400)
    statement = AccountStatement(database)
    whole, _ = await statement.page(user, limit=100)
    assert len(whole) == 8 and sum(line.entries for line in whole) == 12
    for limit in (1, 2, 3, 5):
        assert await read_all(statement, user, limit) == whole
    assert [line.kind for line in whole] == ["charge", "grant"] * 4
    last, more = await statement.page(user, limit=3, before=whole[-1].position)
    assert last == [] and more is None


async def test_an_account_without_entries_has_an_empty_statement(
    database: Database, new_account: NewAccount
) -> None:
    account = await new_account("empty")
    assert await AccountStatement(database).page(account) == ([], None)
    with pytest.raises(ValueError):
        await AccountStatement(database).page(account, limit=0)
