"""The credit ledger: append-only entries, balances cached beside them, and holds.

Every change to an account's money is one :class:`~infermesh.store.LedgerEntry` written
in the same transaction as the account's cached :class:`~infermesh.store.Balance`, whose
row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite's write lock is taken by the
session). So a hold and the balance check behind it are atomic: concurrent requests can
never hold more than the balance, and the balance never goes negative.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.billing import _ledger_rows as _rows
from infermesh.billing.money import format_usd
from infermesh.billing.records import (
    BalanceRecord,
    BatchWritten,
    EntryRecord,
    Reserved,
    Settled,
    Settlement,
    SliceCharge,
    SliceRelease,
)
from infermesh.errors import InvalidRequest, NotFound, PaymentRequired
from infermesh.store import Account, Balance, Database, Hold, LedgerEntry, UsageEntry, utcnow

logger = logging.getLogger(__name__)

MAX_GRANT = 1_000_000 * 1_000_000
"""The largest single grant or deposit: one million USD, in micro-USD."""


class InsufficientCredits(PaymentRequired):
    """The account's available balance does not cover the request's largest cost."""

    code = "insufficient_credits"


class DuplicateReference(InvalidRequest):
    """A grant or deposit with this reference was already recorded for the account."""

    code = "duplicate_reference"


class CreditLedger:
    """Grants, holds, settlements and expiry over the ledger tables."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    async def balance(self, account_id: int) -> BalanceRecord:
        """The account's balance now (zero for an account that never had money)."""
        async with self._db.session(read_only=True) as session:
            row = await session.get(Balance, account_id)
        if row is None:
            return BalanceRecord(account_id, 0, 0)
        return BalanceRecord(account_id, row.balance, row.held)

    async def credit(
        self, account_id: int, amount: int, *, kind: str, reference: str, reason: str | None
    ) -> BalanceRecord:
        """Add ``amount`` to the account (a grant or a deposit), once per ``reference``."""
        try:
            async with self._db.session() as session, session.begin():
                return await self.credit_in(
                    session, account_id, amount, kind=kind, reference=reference, reason=reason
                )
        except IntegrityError as exc:
            raise DuplicateReference(
                f"A {kind} with reference '{reference}' was already recorded.", param="reference"
            ) from exc

    async def credit_in(
        self,
        session: AsyncSession,
        account_id: int,
        amount: int,
        *,
        kind: str,
        reference: str,
        reason: str | None,
    ) -> BalanceRecord:
        """:meth:`credit` inside the caller's transaction ``session``, so that the entry
        commits (or not) with the caller's own changes. A repeated reference fails the
        caller's commit with an ``IntegrityError``."""
        if not 0 < amount <= MAX_GRANT:
            raise InvalidRequest(
                f"An amount must be more than 0 and at most {format_usd(MAX_GRANT)} USD.",
                param="amount",
            )
        if await session.get(Account, account_id) is None:
            raise NotFound(f"No account with id {account_id}.", param="account")
        row = await _rows.lock_balances(session, [account_id])
        _rows.append(session, row[account_id], kind, amount, 0, reference, reason, self._clock)
        return _rows.record(row[account_id])

    async def debit_in(
        self,
        session: AsyncSession,
        account_id: int,
        amount: int,
        *,
        kind: str,
        reference: str,
        reason: str | None,
    ) -> BalanceRecord:
        """Take ``amount`` from the account's available balance (a payout), inside the
        caller's transaction; :class:`InsufficientCredits` if it is not available. A
        repeated reference fails the caller's commit with an ``IntegrityError``."""
        if not 0 < amount <= MAX_GRANT:
            raise InvalidRequest("A debit must be more than 0 and at most the largest grant.")
        row = (await _rows.lock_balances(session, [account_id]))[account_id]
        if amount > row.balance - row.held:
            raise InsufficientCredits(
                f"${format_usd(amount)} is more than the account's available "
                f"${format_usd(max(row.balance - row.held, 0))}."
            )
        _rows.append(session, row, kind, -amount, 0, reference, reason, self._clock)
        return _rows.record(row)

    async def hold(self, account_id: int, hold_id: str, amount: int, *, ttl: timedelta) -> int:
        """Hold ``amount`` for the request ``hold_id``; the available balance left after.

        Raises :class:`InsufficientCredits` (and holds nothing) if it is not available.
        """
        if amount <= 0:
            raise ValueError("a hold must be of a positive amount")
        now = self._clock()
        async with self._db.session() as session, session.begin():
            row = (await _rows.lock_balances(session, [account_id]))[account_id]
            available = row.balance - row.held
            if amount > available:
                raise InsufficientCredits(
                    f"Insufficient credits: this request may cost up to "
                    f"${format_usd(amount)} but the account has ${format_usd(max(available, 0))} "
                    "available. Top up your balance, or lower max_tokens.",
                )
            session.add(
                Hold(
                    id=hold_id,
                    account_id=account_id,
                    amount=amount,
                    status="open",
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
            _rows.append(session, row, "hold", 0, amount, hold_id, None, self._clock)
            return available - amount

    async def settle(self, settlement: Settlement) -> Settled:
        """Charge the request's cost, release the rest of its hold, credit the operator.

        Idempotent: a request already settled is not charged again. Writes the usage
        row in the same transaction. The charge never exceeds what was held (or, for a
        hold that already expired, what is still available).
        """
        try:
            async with self._db.session() as session, session.begin():
                return await self._settle(session, settlement)
        except IntegrityError:
            if not await self._settled(settlement):
                raise
            # A concurrent settlement of the same request won.
            return Settled(0, await self.balance(settlement.account_id), repeated=True)

    async def _settled(self, settlement: Settlement) -> bool:
        async with self._db.session(read_only=True) as session:
            return await session.get(UsageEntry, settlement.usage.id) is not None

    async def _settle(self, session: AsyncSession, settlement: Settlement) -> Settled:
        hold = await _rows.lock_hold(session, settlement.hold_id)
        if (hold is not None and hold.status == "settled") or (
            await session.get(UsageEntry, settlement.usage.id) is not None
        ):
            balance = await session.get(Balance, settlement.account_id)
            return Settled(0, _rows.record_or_zero(settlement.account_id, balance), repeated=True)
        accounts = [settlement.account_id]
        if settlement.earning is not None:
            accounts.append(settlement.earning.account_id)
        rows = await _rows.lock_balances(session, accounts)
        charged = self._charge(session, rows[settlement.account_id], hold, settlement)
        share = settlement.earning.of(charged) if settlement.earning is not None else 0
        if settlement.earning is not None and share:
            operator = rows[settlement.earning.account_id]
            _rows.append(
                session, operator, "earning", share, 0, settlement.hold_id, None, self._clock
            )
            settlement.usage.operator_earning = share
        settlement.usage.cost = charged
        session.add(UsageEntry(**settlement.usage.as_row()))
        await session.flush()
        return Settled(charged, _rows.record(rows[settlement.account_id]))

    async def reserve(
        self,
        account_id: int,
        slice_id: str,
        reference: str,
        *,
        least: int,
        most: int,
        rich_from: int,
        ttl: timedelta,
        shown_available: int = 0,
    ) -> Reserved | None:
        """Reserve between ``least`` and ``most`` of the account's available balance for
        the slice ``slice_id`` (made, or grown if it is still open), in one transaction.

        ``most`` is taken only if at least ``rich_from`` is available; otherwise exactly
        ``least`` (so a short balance is not split between gateways). Raises
        :class:`InsufficientCredits` if ``least`` is not available (its message counts
        ``shown_available``, what the caller already holds unpromised, as available too).
        Returns None if the slice exists but is no longer open (it expired).
        """
        if not 0 < least <= most:
            raise ValueError("a reservation must be of a positive amount")
        now = self._clock()
        async with self._db.session() as session, session.begin():
            hold = await _rows.lock_hold(session, slice_id)
            if hold is not None and hold.status != "open":
                return None
            row = (await _rows.lock_balances(session, [account_id]))[account_id]
            available = row.balance - row.held
            if least > available:
                shown = max(available, 0) + shown_available
                raise InsufficientCredits(
                    f"Insufficient credits: this request may cost up to "
                    f"${format_usd(least + shown_available)} but the account has "
                    f"${format_usd(shown)} available. Top up your balance, or lower max_tokens.",
                )
            amount = most if available >= max(rich_from, most) else least
            if hold is None:
                session.add(
                    Hold(
                        id=slice_id,
                        account_id=account_id,
                        amount=amount,
                        status="open",
                        created_at=now,
                        expires_at=now + ttl,
                    )
                )
            else:
                hold.amount += amount
                hold.expires_at = now + ttl
            _rows.append(session, row, "hold", 0, amount, reference, None, self._clock)
            return Reserved(amount, amount < most, _rows.record(row))

    async def write_batch(
        self, charges: Sequence[SliceCharge], releases: Sequence[SliceRelease]
    ) -> BatchWritten:
        """Write many settlements against slices, and slice releases, in one transaction.

        Each request is charged against its slice (never more than the slice still
        holds; against an expired slice, never more than is available, as a "late"
        charge), its operator credited and its usage recorded. A request already
        recorded (a retried batch) is skipped, so none is charged twice.
        """
        async with self._db.session() as session, session.begin():
            slice_ids = {charge.slice_id for charge in charges if charge.slice_id is not None}
            slice_ids.update(release.slice_id for release in releases)
            holds = await _rows.lock_holds(session, slice_ids)
            accounts = {release.account_id for release in releases}
            for charge in charges:
                accounts.add(charge.settlement.account_id)
                if charge.settlement.earning is not None:
                    accounts.add(charge.settlement.earning.account_id)
            rows = await _rows.lock_balances(session, list(accounts))
            done = await _rows.recorded(session, [charge.settlement.usage.id for charge in charges])
            released = await _rows.released(session, releases)
            entries: list[dict[str, object]] = []
            usages: list[dict[str, object]] = []
            short: dict[str, int] = {}
            for charge in charges:
                settlement = charge.settlement
                if settlement.usage.id in done:
                    continue
                done.add(settlement.usage.id)
                hold = holds.get(charge.slice_id) if charge.slice_id is not None else None
                charged = self._charge_slice(entries, rows, hold, settlement)
                if charged < settlement.cost:
                    short[settlement.hold_id] = settlement.cost - charged
                usages.append(settlement.usage.as_row())
            for release in releases:
                if (release.account_id, release.reference) not in released:
                    hold = holds.get(release.slice_id)
                    _rows.release_slice(entries, rows, hold, release, self._clock)
            if entries:
                await session.execute(insert(LedgerEntry), entries)
            if usages:
                await session.execute(insert(UsageEntry), usages)
            ended = {slice_id for slice_id in slice_ids if _rows.ended(holds.get(slice_id))}
            balances = {account: _rows.record(row) for account, row in rows.items()}
            return BatchWritten(balances, short, ended)

    def _charge_slice(
        self,
        entries: list[dict[str, object]],
        rows: dict[int, Balance],
        hold: Hold | None,
        settlement: Settlement,
    ) -> int:
        """Charge one request (into ``entries``); the amount charged."""
        row = rows[settlement.account_id]
        reference = settlement.hold_id
        if hold is not None and hold.status == "open":
            charged = min(settlement.cost, hold.amount)
            hold.amount -= charged
            if charged:
                entries.append(
                    _rows.entry(row, "charge", -charged, -charged, reference, None, self._clock)
                )
        else:
            charged = min(settlement.cost, max(row.balance - row.held, 0))
            if charged:
                reason = "late" if hold is not None else None
                entries.append(
                    _rows.entry(row, "charge", -charged, 0, reference, reason, self._clock)
                )
        share = settlement.earning.of(charged) if settlement.earning is not None else 0
        if settlement.earning is not None and share:
            operator = rows[settlement.earning.account_id]
            entries.append(_rows.entry(operator, "earning", share, 0, reference, None, self._clock))
        settlement.usage.cost = charged
        settlement.usage.operator_earning = share
        return charged

    async def open_holds(self, hold_ids: Sequence[str]) -> set[str]:
        """Which of these holds are still open."""
        if not hold_ids:
            return set()
        query = select(Hold.id).where(Hold.id.in_(list(hold_ids)), Hold.status == "open")
        async with self._db.session(read_only=True) as session:
            return set((await session.scalars(query)).all())

    async def renew_holds(self, hold_ids: Sequence[str], *, ttl: timedelta) -> int:
        """Push the expiry of these open holds ``ttl`` from now (their requests still
        run); how many were renewed."""
        if not hold_ids:
            return 0
        statement = (
            update(Hold)
            .where(Hold.id.in_(list(hold_ids)), Hold.status == "open")
            .values(expires_at=self._clock() + ttl)
        )
        async with self._db.session() as session, session.begin():
            result = await session.execute(statement)
        return int(getattr(result, "rowcount", 0) or 0)

    async def expire_holds(self) -> int:
        """Release every open hold past its expiry (its gateway died); how many were."""
        now = self._clock()
        async with self._db.session(read_only=True) as session:
            stale = (
                await session.scalars(
                    select(Hold.id).where(Hold.status == "open", Hold.expires_at <= now)
                )
            ).all()
        released = 0
        for hold_id in stale:
            async with self._db.session() as session, session.begin():
                hold = await _rows.lock_hold(session, hold_id)
                if hold is None or hold.status != "open":
                    continue
                row = (await _rows.lock_balances(session, [hold.account_id]))[hold.account_id]
                _rows.append(
                    session, row, "release", 0, -hold.amount, hold.id, "expired", self._clock
                )
                hold.status = "expired"
                released += 1
        if released:
            logger.warning("released %d expired credit holds", released)
        return released

    async def entries(self, account_id: int, *, limit: int = 20) -> list[EntryRecord]:
        """The account's newest ledger entries, newest first."""
        query = (
            select(LedgerEntry)
            .where(LedgerEntry.account_id == account_id)
            .order_by(LedgerEntry.id.desc())
            .limit(limit)
        )
        async with self._db.session(read_only=True) as session:
            rows = (await session.scalars(query)).all()
        return [_rows.entry_record(row) for row in rows]

    async def ledger_totals(self, account_id: int) -> BalanceRecord:
        """The balance and held amount summed from the ledger itself (for audits)."""
        query = select(
            func.coalesce(func.sum(LedgerEntry.balance_change), 0),
            func.coalesce(func.sum(LedgerEntry.held_change), 0),
        ).where(LedgerEntry.account_id == account_id)
        async with self._db.session(read_only=True) as session:
            balance, held = (await session.execute(query)).one()
        return BalanceRecord(account_id, int(balance), int(held))

    def _charge(
        self, session: AsyncSession, row: Balance, hold: Hold | None, settlement: Settlement
    ) -> int:
        """Write the charge and release entries; return the amount charged."""
        reference = settlement.hold_id
        if hold is not None and hold.status == "open":
            charged = min(settlement.cost, hold.amount)
            if charged < settlement.cost:
                logger.warning(
                    "request %s cost %d micro-USD, more than its hold of %d; charged the hold",
                    reference,
                    settlement.cost,
                    hold.amount,
                )
            if charged:
                _rows.append(
                    session, row, "charge", -charged, -charged, reference, None, self._clock
                )
            if hold.amount > charged:
                rest = hold.amount - charged
                _rows.append(session, row, "release", 0, -rest, reference, None, self._clock)
            hold.status = "settled"
            return charged
        # No open hold: a free model, or a hold that expired while the request ran.
        charged = min(settlement.cost, max(row.balance - row.held, 0))
        if charged < settlement.cost:
            logger.warning("request %s settled after its hold expired; charge capped", reference)
        if charged:
            _rows.append(session, row, "charge", -charged, 0, reference, "late", self._clock)
        if hold is not None:
            hold.status = "settled"
        return charged
