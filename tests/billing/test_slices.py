"""Credit slices: holds served from memory against money reserved in the ledger, and
settlements written in batches. On SQLite and PostgreSQL, with several "gateways" (one
:class:`CreditSlices` each, on its own connection pool) sharing one database."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from infermesh.billing.ledger import CreditLedger, InsufficientCredits
from infermesh.billing.records import BalanceRecord, Earning, SliceCharge, SliceRelease
from infermesh.billing.slices import CreditSlices
from infermesh.store import Database, Hold, LedgerEntry
from tests.billing.conftest import NewAccount
from tests.billing.test_ledger import assert_consistent, grant, settlement
from tests.support.clock import Clock

TTL = timedelta(seconds=60)


def slices_on(ledger: CreditLedger, **options: float) -> CreditSlices:
    return CreditSlices(ledger, ttl=TTL, **options)  # type: ignore[arg-type]


async def kinds(database: Database, account_id: int) -> list[str]:
    async with database.session(read_only=True) as session:
        query = (
            select(LedgerEntry.kind)
            .where(LedgerEntry.account_id == account_id)
            .order_by(LedgerEntry.id)
        )
        return list((await session.scalars(query)).all())


async def open_slices(database: Database) -> list[Hold]:
    async with database.session(read_only=True) as session:
        return list((await session.scalars(select(Hold).where(Hold.status == "open"))).all())


async def test_one_reservation_serves_many_requests_and_one_batch_writes_them(
    ledger: CreditLedger, database: Database, new_account: NewAccount
) -> None:
    alice, operator = await new_account("alice"), await new_account("operator")
    await grant(ledger, alice, 1_000_000)
    slices = slices_on(ledger)
    settled = []
    for index in range(20):
        available = await slices.hold(alice, f"r{index}", 1_000)
        assert available == 1_000_000 - sum(s.charged for s in settled) - 1_000
        earning = Earning(operator, 5_000)
        settled.append(slices.settle(settlement(f"r{index}", alice, 700, earning)))
    assert [s.charged for s in settled] == [700] * 20
    assert settled[-1].balance == BalanceRecord(alice, 1_000_000 - 14_000, 0)  # as known here
    assert await kinds(database, alice) == ["grant", "hold"]  # one reservation, nothing else
    await slices.flush()
    assert await kinds(database, alice) == ["grant", "hold"] + ["charge"] * 20
    assert (await ledger.balance(operator)).balance == 20 * 350
    assert (await ledger.balance(alice)).balance == 1_000_000 - 14_000
    await slices.close()  # gives the slice back
    assert await assert_consistent(ledger, alice) == BalanceRecord(alice, 986_000, 0)
    assert await open_slices(database) == []
    assert slices.waiting() == 0


async def test_a_short_balance_lets_exactly_k_through_across_gateways(
    connections: list[Database], new_account: NewAccount
) -> None:
    gateways = [slices_on(CreditLedger(db)) for db in connections]
    alice = await new_account("alice")
    k = 5
    await grant(CreditLedger(connections[0]), alice, k * 100)
    attempts = [
        gateways[index % len(gateways)].hold(alice, f"r{index}", 100) for index in range(25)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    held = [result for result in results if isinstance(result, int)]
    refused = [result for result in results if isinstance(result, InsufficientCredits)]
    assert (len(held), len(refused)) == (k, 25 - k)
    ledger = CreditLedger(connections[0])
    assert await ledger.balance(alice) == BalanceRecord(alice, k * 100, k * 100)
    # Each request used 60 of its 100: what it did not use goes back at the next batch.
    for gateway in gateways:
        for index in range(25):
            if gateway.holds(f"r{index}"):
                gateway.settle(settlement(f"r{index}", alice, 60))
        await gateway.flush()
    assert await assert_consistent(ledger, alice) == BalanceRecord(alice, k * 40, 0)
    assert await open_slices(connections[0]) == []  # exact slices end with their requests


async def test_rich_slices_of_many_gateways_never_exceed_the_balance(
    connections: list[Database], new_account: NewAccount
) -> None:
    """Each gateway reserves a whole slice while the account is rich, and only what a
    request needs once it is short; together they never hold more than the balance. (In
    a burst, a gateway may refuse while another still has part of a slice unpromised:
    at most one slice per gateway, until it is given back.)"""
    gateways = [slices_on(CreditLedger(db), holds_per_slice=8) for db in connections]
    alice = await new_account("alice")
    balance = 10_000
    await grant(CreditLedger(connections[0]), alice, balance)
    results = await asyncio.gather(
        *(gateways[index % 4].hold(alice, f"r{index}", 100) for index in range(150)),
        return_exceptions=True,
    )
    held = [result for result in results if isinstance(result, int)]
    assert all(isinstance(r, int | InsufficientCredits) for r in results), results
    assert balance // 100 - 4 * 8 <= len(held) <= balance // 100
    ledger = CreditLedger(connections[0])
    async with connections[0].session(read_only=True) as session:
        entries = (
            await session.scalars(select(LedgerEntry).where(LedgerEntry.account_id == alice))
        ).all()
    assert all(0 <= entry.held_after <= entry.balance_after for entry in entries)
    for gateway in gateways:
        for index in range(150):
            if gateway.holds(f"r{index}"):
                gateway.settle(settlement(f"r{index}", alice, 100))
        await gateway.close()
    spent = 100 * len(held)
    assert await assert_consistent(ledger, alice) == BalanceRecord(alice, balance - spent, 0)


async def test_an_unused_slice_is_given_back_after_it_idles(
    ledger: CreditLedger, database: Database, new_account: NewAccount
) -> None:
    alice = await new_account("alice")
    await grant(ledger, alice, 1_000_000)
    ticks = [0.0]
    slices = CreditSlices(ledger, ttl=TTL, idle=5.0, clock=lambda: ticks[0])
    await slices.hold(alice, "r1", 1_000)
    slices.settle(settlement("r1", alice, 10))
    await slices.flush()
    assert len(await open_slices(database)) == 1  # kept for the next request
    assert (await slices.balance(alice)) == BalanceRecord(alice, 999_990, 0)
    ticks[0] = 5.0
    await slices.flush()
    assert await open_slices(database) == []
    assert await assert_consistent(ledger, alice) == BalanceRecord(alice, 999_990, 0)
    assert slices.waiting() == 0


async def test_a_request_held_by_an_expired_slice_is_charged_late_and_capped(
    ledger: CreditLedger, database: Database, new_account: NewAccount, clock: Clock
) -> None:
    """A gateway cut off from the database longer than the slice's TTL: another one
    releases the slice; the request still settles, as a "late" charge that never takes
    more than the account has."""
    alice = await new_account("alice")
    await grant(ledger, alice, 500_000)
    slices = slices_on(ledger)
    await slices.hold(alice, "r1", 1_000)
    clock.advance(TTL.total_seconds() + 1)
    assert await ledger.expire_holds() == 1
    slices.settle(settlement("r1", alice, 900))
    await slices.flush()
    async with database.session(read_only=True) as session:
        charge = await session.scalar(select(LedgerEntry).where(LedgerEntry.kind == "charge"))
    assert charge is not None and (charge.reason, charge.held_change) == ("late", 0)
    assert await assert_consistent(ledger, alice) == BalanceRecord(alice, 499_100, 0)
    await slices.hold(alice, "r2", 1_000)  # a new slice is reserved
    assert len(await open_slices(database)) == 1


async def test_a_retried_batch_charges_nobody_twice(
    ledger: CreditLedger, database: Database, new_account: NewAccount
) -> None:
    alice = await new_account("alice")
    await grant(ledger, alice, 1_000_000)
    slices = slices_on(ledger)
    await slices.hold(alice, "r1", 1_000)
    (reserved,) = await open_slices(database)
    slices.settle(settlement("r1", alice, 400))
    await slices.flush()
    # The same batch again (as after a commit whose answer was lost): nothing changes.
    again = SliceCharge(reserved.id, settlement("r1", alice, 400))
    release = SliceRelease(reserved.id, alice, f"{reserved.id}:1", 0)
    written = await ledger.write_batch([again], [release])
    assert written.balances[alice] == BalanceRecord(alice, 999_600, 1_000 * 32 - 400)
    assert await kinds(database, alice) == ["grant", "hold", "charge"]
