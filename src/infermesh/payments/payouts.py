"""Operator payouts: each operator's unpaid earnings, above a minimum, sent in USDC
from the treasury to the payout wallet it bound by signing.

A payout is one database transaction: the ``payout`` ledger entry that takes the amount
from the operator's balance, the ``payouts`` row and the treasury's signed transfer
(:class:`~infermesh.payments.outbox.Outbox`), under a lock per operator. An operator
with a payout still ``sent`` gets no other, so a run repeated, or killed and run again,
broadcasts the same stored transfer and never a second one. A payout becomes ``paid``
once its transfer is final; if the transfer reverts or is dropped, a ``payout_refund``
entry gives the money back and the payout is ``failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.billing.ledger import MAX_GRANT, CreditLedger
from infermesh.errors import ConfigError
from infermesh.payments.chain import Fees
from infermesh.payments.outbox import Call, Outbox, Signer, StoredTx
from infermesh.payments.usdc import read_uint, transfer_call
from infermesh.store import (
    Account,
    Balance,
    ChainTx,
    Database,
    LedgerEntry,
    Payout,
    PayoutWallet,
    transaction_lock,
    utcnow,
)

logger = logging.getLogger(__name__)

PAYOUT_GAS = 120_000
"""Gas of the treasury's ``transfer`` (USDC's takes about 60,000)."""


@dataclass(frozen=True, slots=True)
class PayoutOptions:
    """Payouts of ``usdc`` on ``chain_id``, of at least ``minimum`` micro-USD."""

    chain_id: int
    usdc: str
    minimum: int = 10_000_000


@dataclass(frozen=True, slots=True)
class PayoutRecord:
    """One payout as its operator (and the admin) sees it."""

    id: str
    account: str
    address: str
    amount: int
    status: str
    tx_hash: str
    error: str | None
    created_at: datetime
    paid_at: datetime | None


@dataclass(frozen=True, slots=True)
class EarningsRecord:
    """An operator's money: ``earned`` in all, ``paid`` out (final), ``pending`` in
    payouts not final yet, ``unpaid`` still owed (of which ``payable`` now: no more than
    its available balance), and the wallet it is paid to."""

    account: str
    wallet: str | None
    earned: int
    paid: int
    pending: int
    unpaid: int
    payable: int
    minimum: int
    payouts: list[PayoutRecord]


@dataclass
class RunReport:
    """What one payout run did: payouts sent, and operators passed over (and why)."""

    sent: list[PayoutRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class PayoutService:
    """Payout wallets, earnings, payout runs and their settlement."""

    def __init__(
        self,
        db: Database,
        ledger: CreditLedger,
        outbox: Outbox,
        options: PayoutOptions,
        *,
        treasury: Signer | None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._outbox = outbox
        self.options = options
        self._treasury = treasury
        self._clock = clock

    @property
    def can_pay(self) -> bool:
        """Whether this service holds the treasury's key (it can send payouts)."""
        return self._treasury is not None

    async def bind_wallet(self, account_id: int, address: str) -> None:
        """Pay ``account_id`` to ``address`` from now on (its signature was checked)."""
        now = self._clock()
        async with self._db.session() as session, session.begin():
            row = await session.get(PayoutWallet, account_id, with_for_update=True)
            if row is None:
                session.add(PayoutWallet(account_id=account_id, address=address, bound_at=now))
            else:
                row.address, row.bound_at = address, now

    async def earnings(self, account_id: int, *, limit: int = 20) -> EarningsRecord:
        """The operator's earnings, payouts and what is owed."""
        async with self._db.session(read_only=True) as session:
            name = await session.scalar(select(Account.name).where(Account.id == account_id))
            wallet = await session.scalar(
                select(PayoutWallet.address).where(PayoutWallet.account_id == account_id)
            )
            totals = await _totals(session, account_id)
            rows = (
                await session.execute(
                    _payouts_query()
                    .where(Payout.account_id == account_id)
                    .order_by(Payout.id.desc())
                    .limit(limit)
                )
            ).all()
        pending = sum(row[0].amount for row in rows if row[0].status == "sent")
        earned, unpaid, available = totals
        return EarningsRecord(
            account=name or "",
            wallet=wallet,
            earned=earned,
            paid=earned - unpaid - pending,
            pending=pending,
            unpaid=unpaid,
            payable=max(min(unpaid, available), 0),
            minimum=self.options.minimum,
            payouts=[_record(row[0], row[1], row[2]) for row in rows],
        )

    async def recent(self, *, limit: int = 50) -> list[PayoutRecord]:
        """The newest payouts of all operators."""
        async with self._db.session(read_only=True) as session:
            rows = (
                await session.execute(_payouts_query().order_by(Payout.id.desc()).limit(limit))
            ).all()
        return [_record(row[0], row[1], row[2]) for row in rows]

    async def run(self) -> RunReport:
        """Follow earlier payouts, then pay every operator owed at least the minimum
        (one transfer each). :class:`ConfigError` without the treasury's key."""
        if self._treasury is None:
            raise ConfigError(
                "Payouts need the treasury's key: set INFERMESH_PAYMENTS_TREASURY_KEY."
            )
        await self._outbox.advance()
        await self.settle()
        report = RunReport()
        candidates = await self._candidates()
        if not candidates:
            return report
        chain = self._outbox.chain
        funds = await read_uint(
            chain, self.options.usdc, "balanceOf(address)", self._treasury.address
        )
        fees = await chain.fees()
        for account_id, name in candidates:
            outcome = await self._pay(account_id, fees, funds)
            if isinstance(outcome, str):
                report.skipped.append((name, outcome))
                continue
            record, stored = outcome
            funds -= record.amount
            await self._outbox.broadcast([stored])
            report.sent.append(record)
            logger.info("payout %s of %d micro-USD to %s sent", record.id, record.amount, name)
        return report

    async def settle(self) -> None:
        """Payouts whose transfer is final become ``paid``; those whose transfer
        reverted or was dropped become ``failed``, their amount credited back."""
        async with self._db.session(read_only=True) as session:
            open_rows = (
                await session.execute(
                    select(Payout.id, ChainTx.status)
                    .join(ChainTx, ChainTx.id == Payout.tx_id)
                    .where(
                        Payout.status == "sent", ChainTx.status.in_(("final", "failed", "dropped"))
                    )
                )
            ).all()
        for payout_id, tx_status in open_rows:
            await self._end(payout_id, tx_status)

    async def _end(self, payout_id: int, tx_status: str) -> None:
        now = self._clock()
        async with self._db.session() as session, session.begin():
            row = await session.get(Payout, payout_id, with_for_update=True)
            if row is None or row.status != "sent":
                return
            row.updated_at = now
            if tx_status == "final":
                row.status, row.paid_at = "paid", now
                return
            row.status = "failed"
            row.error = f"The transfer was {'dropped' if tx_status == 'dropped' else 'reverted'}."
            await self._ledger.credit_in(
                session,
                row.account_id,
                row.amount,
                kind="payout_refund",
                reference=f"payout_{row.id}",
                reason=row.error,
            )
        logger.error("payout %d failed (%s); its amount was credited back", payout_id, tx_status)

    async def _candidates(self) -> list[tuple[int, str]]:
        """Operators with a payout wallet and some earnings, by account id."""
        query = (
            select(PayoutWallet.account_id, Account.name)
            .join(Account, Account.id == PayoutWallet.account_id)
            .where(
                PayoutWallet.account_id.in_(
                    select(LedgerEntry.account_id).where(LedgerEntry.kind == "earning")
                )
            )
            .order_by(PayoutWallet.account_id)
        )
        async with self._db.session(read_only=True) as session:
            return [(int(a), str(n)) for a, n in (await session.execute(query)).all()]

    async def _pay(
        self, account_id: int, fees: Fees, funds: int
    ) -> tuple[PayoutRecord, StoredTx] | str:
        """One operator's payout, stored with its ledger entry and signed transfer; or
        why there is none."""
        assert self._treasury is not None
        now = self._clock()
        async with self._db.session() as session, session.begin():
            await transaction_lock(session, f"infermesh.payouts.{account_id}")
            busy = await session.scalar(
                select(Payout.id).where(Payout.account_id == account_id, Payout.status == "sent")
            )
            if busy is not None:
                return f"payout payout_{busy} is not final yet"
            wallet = await session.get(PayoutWallet, account_id)
            _, unpaid, available = await _totals(session, account_id)
            amount = min(unpaid, available, MAX_GRANT)
            if wallet is None or amount < self.options.minimum:
                return f"owed {max(amount, 0)} micro-USD, below the minimum {self.options.minimum}"
            if amount > funds:
                return f"the treasury holds {funds} micro-USD, less than the {amount} owed"
            call = Call(
                "payout", self.options.usdc, transfer_call(wallet.address, amount), PAYOUT_GAS
            )
            (stored,) = await self._outbox.store(session, self._treasury, [call], fees)
            row = Payout(
                account_id=account_id,
                chain_id=self.options.chain_id,
                address=wallet.address,
                amount=amount,
                tx_id=stored.id,
                status="sent",
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            await session.flush()
            await self._ledger.debit_in(
                session,
                account_id,
                amount,
                kind="payout",
                reference=f"payout_{row.id}",
                reason=f"USDC payout to {wallet.address}",
            )
            name = await session.scalar(select(Account.name).where(Account.id == account_id))
        record = PayoutRecord(
            f"payout_{row.id}",
            name or "",
            wallet.address,
            amount,
            "sent",
            stored.tx_hash,
            None,
            now,
            None,
        )
        return record, stored


async def _totals(session: AsyncSession, account_id: int) -> tuple[int, int, int]:
    """The account's earnings in all, earnings not yet paid out (nor in a payout under
    way), and its available balance."""
    sums = await session.execute(
        select(LedgerEntry.kind, func.coalesce(func.sum(LedgerEntry.balance_change), 0))
        .where(
            LedgerEntry.account_id == account_id,
            LedgerEntry.kind.in_(("earning", "payout", "payout_refund")),
        )
        .group_by(LedgerEntry.kind)
    )
    by_kind = {kind: int(total) for kind, total in sums.all()}
    earned = by_kind.get("earning", 0)
    unpaid = earned + by_kind.get("payout", 0) + by_kind.get("payout_refund", 0)
    balance = await session.get(Balance, account_id)
    available = 0 if balance is None else balance.balance - balance.held
    return earned, unpaid, available


def _payouts_query() -> Select[Payout, str, str]:
    return (
        select(Payout, Account.name, ChainTx.tx_hash)
        .join(Account, Account.id == Payout.account_id)
        .join(ChainTx, ChainTx.id == Payout.tx_id)
    )


def _record(row: Payout, name: str, tx_hash: str) -> PayoutRecord:
    return PayoutRecord(
        id=f"payout_{row.id}",
        account=name,
        address=row.address,
        amount=row.amount,
        status=row.status,
        tx_hash=tx_hash,
        error=row.error,
        created_at=row.created_at,
        paid_at=row.paid_at,
    )
