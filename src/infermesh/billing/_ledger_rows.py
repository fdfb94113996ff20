"""The ledger's rows: locking balances and holds (always in one order), and the entries
that change a locked balance row. Used by :class:`~infermesh.billing.ledger.CreditLedger`
inside its transactions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.billing.records import BalanceRecord, EntryRecord, SliceRelease
from infermesh.store import Balance, Hold, LedgerEntry, UsageEntry


def append(
    session: AsyncSession,
    row: Balance,
    kind: str,
    balance_change: int,
    held_change: int,
    reference: str,
    reason: str | None,
    clock: Callable[[], datetime],
) -> None:
    """Apply one entry to the (locked) balance row and record it."""
    values = entry(row, kind, balance_change, held_change, reference, reason, clock)
    session.add(LedgerEntry(**values))


async def lock_hold(session: AsyncSession, hold_id: str) -> Hold | None:
    hold: Hold | None = await session.scalar(
        select(Hold).where(Hold.id == hold_id).with_for_update()
    )
    return hold


async def lock_balances(session: AsyncSession, account_ids: Sequence[int]) -> dict[int, Balance]:
    """Lock the balance rows of these accounts (creating missing ones), in id order.

    Locking in one order means two settlements that credit each other's accounts
    cannot deadlock.
    """
    wanted = sorted(set(account_ids))
    query = (
        select(Balance)
        .where(Balance.account_id.in_(wanted))
        .order_by(Balance.account_id)
        .with_for_update()
    )
    rows = {row.account_id: row for row in (await session.scalars(query)).all()}
    missing = [{"account_id": account} for account in wanted if account not in rows]
    if not missing:
        return rows
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(insert(Balance).values(missing).on_conflict_do_nothing())
    return {row.account_id: row for row in (await session.scalars(query)).all()}


def record(row: Balance) -> BalanceRecord:
    return BalanceRecord(row.account_id, row.balance, row.held)


def record_or_zero(account_id: int, row: Balance | None) -> BalanceRecord:
    return BalanceRecord(account_id, 0, 0) if row is None else record(row)


def entry_record(row: LedgerEntry) -> EntryRecord:
    return EntryRecord(
        id=row.id,
        kind=row.kind,
        balance_change=row.balance_change,
        held_change=row.held_change,
        balance_after=row.balance_after,
        reference=row.reference,
        reason=row.reason,
        created_at=row.created_at,
    )


def entry(
    row: Balance,
    kind: str,
    balance_change: int,
    held_change: int,
    reference: str,
    reason: str | None,
    clock: Callable[[], datetime],
) -> dict[str, object]:
    """Apply one entry to the (locked) balance row; the entry's row, to insert."""
    now = clock()
    row.balance += balance_change
    row.held += held_change
    row.updated_at = now
    return {
        "account_id": row.account_id,
        "kind": kind,
        "balance_change": balance_change,
        "held_change": held_change,
        "balance_after": row.balance,
        "held_after": row.held,
        "reference": reference,
        "reason": reason,
        "created_at": now,
    }


def release_slice(
    entries: list[dict[str, object]],
    rows: dict[int, Balance],
    hold: Hold | None,
    release: SliceRelease,
    clock: Callable[[], datetime],
) -> None:
    """Give back (part of) a slice's money; nothing if the slice already ended."""
    if hold is None or hold.status != "open":
        return
    amount = hold.amount if release.final else min(release.amount, hold.amount)
    if amount:
        row = rows[release.account_id]
        entries.append(entry(row, "release", 0, -amount, release.reference, None, clock))
        hold.amount -= amount
    if release.final:
        hold.status = "returned"


def ended(hold: Hold | None) -> bool:
    return hold is None or hold.status != "open"


async def lock_holds(session: AsyncSession, hold_ids: set[str]) -> dict[str, Hold]:
    if not hold_ids:
        return {}
    query = select(Hold).where(Hold.id.in_(sorted(hold_ids))).order_by(Hold.id).with_for_update()
    return {hold.id: hold for hold in (await session.scalars(query)).all()}


async def recorded(session: AsyncSession, usage_ids: Sequence[str]) -> set[str]:
    """Which of these requests already have a usage record."""
    if not usage_ids:
        return set()
    query = select(UsageEntry.id).where(UsageEntry.id.in_(list(usage_ids)))
    return set((await session.scalars(query)).all())


async def released(session: AsyncSession, releases: Sequence[SliceRelease]) -> set[tuple[int, str]]:
    """Which of these releases were already written (a retried batch)."""
    if not releases:
        return set()
    query = select(LedgerEntry.account_id, LedgerEntry.reference).where(
        LedgerEntry.kind == "release",
        LedgerEntry.reference.in_([release.reference for release in releases]),
    )
    return {(account, reference) for account, reference in await session.execute(query)}
