"""An account's statement: its ledger as its owner reads it, newest first, a page at a
time. Grants, deposits, payouts and refunds are a line each; charges and earnings are
summed per UTC day (an account may make thousands of requests a day); holds and their
releases, which never move the balance, are left out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Row,
    Select,
    cast,
    extract,
    func,
    literal_column,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.store import Database, LedgerEntry

SUMMED_KINDS = ("charge", "earning")
"""Kinds of entries summed into one line per UTC day."""
DAY_SECONDS = 86_400


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One line: an entry, or the entries of one kind on one UTC day (``day`` set,
    ``entries`` how many). ``position`` is the id of its newest entry: lines are in
    that order, and a page goes on ``before`` the last line's position."""

    position: int
    kind: str
    amount: int
    """The change of the balance, micro-USD (negative: money out)."""
    balance_after: int
    created_at: datetime
    entries: int = 1
    day: date | None = None
    reference: str | None = None
    reason: str | None = None


class AccountStatement:
    """Reads statement pages from the ledger (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(
        self, account_id: int, *, limit: int = 25, before: int | None = None
    ) -> tuple[list[StatementLine], int | None]:
        """The account's ``limit`` newest lines before the position ``before`` (None:
        the newest), newest first; and the position to pass as ``before`` for the next
        page (None: this is the last)."""
        if limit < 1:
            raise ValueError("a statement page has at least one line")
        async with self._db.session(read_only=True) as session:
            single = (await session.scalars(self._single(account_id, limit, before))).all()
            days = (await session.execute(self._days(account_id, limit, before))).all()
            after = await _balances_after(session, [int(row.position) for row in days])
        lines = [_entry_line(row) for row in single]
        lines += [_day_line(row, after[int(row.position)]) for row in days]
        lines.sort(key=lambda line: line.position, reverse=True)
        if len(lines) <= limit:
            return lines, None
        return lines[:limit], lines[limit - 1].position

    def _single(self, account_id: int, limit: int, before: int | None) -> Select[LedgerEntry]:
        query = (
            select(LedgerEntry)
            .where(
                LedgerEntry.account_id == account_id,
                LedgerEntry.balance_change != 0,
                LedgerEntry.kind.not_in(SUMMED_KINDS),
            )
            .order_by(LedgerEntry.id.desc())
            .limit(limit + 1)
        )
        return query if before is None else query.where(LedgerEntry.id < before)

    def _days(
        self, account_id: int, limit: int, before: int | None
    ) -> Select[str, int, int, int, int, datetime]:
        day = _day_number(self._db.dialect)
        position = func.max(LedgerEntry.id)
        query = (
            select(
                LedgerEntry.kind,
                day.label("day"),
                func.count(LedgerEntry.id).label("entries"),
                func.sum(LedgerEntry.balance_change).label("amount"),
                position.label("position"),
                func.max(LedgerEntry.created_at).label("newest"),
            )
            .where(
                LedgerEntry.account_id == account_id,
                LedgerEntry.balance_change != 0,
                LedgerEntry.kind.in_(SUMMED_KINDS),
            )
            .group_by(LedgerEntry.kind, day)
            .order_by(position.desc())
            .limit(limit + 1)
        )
        return query if before is None else query.having(position < before)


async def _balances_after(session: AsyncSession, positions: list[int]) -> dict[int, int]:
    """The balance after each of these entries."""
    if not positions:
        return {}
    query = select(LedgerEntry.id, LedgerEntry.balance_after).where(LedgerEntry.id.in_(positions))
    return {int(key): int(value) for key, value in await session.execute(query)}


def _entry_line(row: LedgerEntry) -> StatementLine:
    return StatementLine(
        position=row.id,
        kind=row.kind,
        amount=row.balance_change,
        balance_after=row.balance_after,
        created_at=row.created_at,
        reference=row.reference,
        reason=row.reason,
    )


def _day_line(row: Row[str, int, int, int, int, datetime], balance_after: int) -> StatementLine:
    return StatementLine(
        position=int(row.position),
        kind=row.kind,
        amount=int(row.amount),
        balance_after=balance_after,
        created_at=_as_datetime(row.newest),
        entries=int(row.entries),
        day=datetime.fromtimestamp(int(row.day) * DAY_SECONDS, UTC).date(),
    )


def _as_datetime(value: datetime | str) -> datetime:
    """``max(created_at)`` as a UTC datetime (SQLite answers an aggregate as text)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _day_number(dialect: str) -> ColumnElement[int]:
    """The UTC day of each entry, as days since the epoch, in SQL. The divisor is
    written into the statement, not bound: PostgreSQL groups by an expression only if
    it is the very one selected."""
    divisor = literal_column(str(DAY_SECONDS), Integer)
    if dialect == "postgresql":
        seconds = extract("epoch", LedgerEntry.created_at)
        return cast(func.floor(seconds / divisor), BigInteger)
    # SQLite keeps the time as text; whole seconds first (see billing.usage).
    whole = func.strftime("%s", func.substr(LedgerEntry.created_at, 1, 19))
    return cast(whole, Integer) // divisor
