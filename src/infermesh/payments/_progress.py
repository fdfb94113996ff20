"""What the watcher writes: a claimed transaction's deposits moved along their states.

Each change to a claim happens in one transaction that locks the claim's row first, so
two watchers (a lease that lapsed under a slow one) take turns on a claim, and the
second sees what the first wrote. A deposit is credited in the same transaction that
marks it ``credited``; the ledger's unique reference refuses a second credit anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.billing.ledger import MAX_GRANT, CreditLedger
from infermesh.billing.money import format_usd
from infermesh.payments.chain import Receipt
from infermesh.payments.records import FINAL_DEPOSIT, OPEN_CLAIM, DepositOptions, OpenClaim
from infermesh.payments.transfers import Transfer
from infermesh.store import Database, Deposit, DepositClaim, LedgerEntry, Wallet

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sighting:
    """A claimed transaction as the chain shows it now: its receipt, its transfers to
    the treasury, its confirmations, and whether it is deep enough (and still in the
    canonical chain) to credit."""

    receipt: Receipt
    transfers: Sequence[Transfer]
    confirmations: int
    final: bool


def reference(chain_id: int, tx_hash: str, log_index: int) -> str:
    """The ledger reference of a deposit: the idempotency key of its credit."""
    return f"{chain_id}:{tx_hash}:{log_index}"


class DepositProgress:
    """Moves claims and deposits along: seen, reorganized away, failed, credited."""

    def __init__(
        self,
        db: Database,
        ledger: CreditLedger,
        options: DepositOptions,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._options = options
        self._clock = clock

    async def unseen(self, claim: OpenClaim) -> None:
        """The transaction is not (or no longer) mined: its deposits go back to
        ``received`` (the claim to ``submitted`` if the gateway sent it); past the
        claim's time to live, a claim the gateway did not send fails as not found (one
        it sent may still be mined: it waits until mined or dropped)."""
        now = self._clock()
        expired = not claim.relayed and now - claim.created_at > self._options.claim_ttl
        async with self._db.session() as session, session.begin():
            row = await _lock_open_claim(session, claim.id)
            if row is None:
                return
            deposits = await _deposits(session, claim.id)
            if expired and not any(d.status == "credited" for d in deposits):
                error = "The transaction was not found on chain in time."
                _fail(row, deposits, error, now, status="expired")
                return
            for deposit in _open(deposits):
                deposit.status, deposit.confirmations = "received", 0
                deposit.block_number = deposit.block_hash = None
                deposit.updated_at = now
            row.status, row.updated_at = ("submitted" if claim.relayed else "received"), now

    async def fail(self, claim: OpenClaim, error: str) -> None:
        """The transaction failed, or holds no USDC transfer to the treasury."""
        now = self._clock()
        async with self._db.session() as session, session.begin():
            row = await _lock_open_claim(session, claim.id)
            if row is not None:
                _fail(row, await _deposits(session, claim.id), error, now)

    async def seen(self, claim: OpenClaim, sighting: Sighting) -> None:
        """Record the transfers of a mined transaction; credit those that qualify if the
        sighting is final."""
        try:
            async with self._db.session() as session, session.begin():
                await self._seen(session, claim, sighting)
        except IntegrityError:
            # Another watcher wrote these rows or credited them first.
            logger.warning("deposit %s was recorded concurrently; marking", claim.tx_hash)
            await self._mark_credited(claim)

    async def _seen(self, session: AsyncSession, claim: OpenClaim, sighting: Sighting) -> None:
        row = await _lock_open_claim(session, claim.id)
        if row is None:
            return
        now = self._clock()
        wallet = await session.scalar(
            select(Wallet.address).where(Wallet.account_id == claim.account_id)
        )
        existing = {d.log_index: d for d in await _deposits(session, claim.id)}
        for transfer in sighting.transfers:
            deposit = existing.get(transfer.log_index)
            if deposit is None:
                deposit = self._new(claim, transfer, now)
                session.add(deposit)
                existing[transfer.log_index] = deposit
            if deposit.status in FINAL_DEPOSIT:
                continue
            _place(deposit, sighting, now)
            refusal = self._refusal(transfer, wallet)
            if refusal is not None:
                deposit.status, deposit.error = "failed", refusal
            elif sighting.final:
                await self._credit(session, deposit, now)
        final = all(d.status in FINAL_DEPOSIT for d in existing.values())
        row.status, row.updated_at = ("done" if final else "mined"), now

    def _new(self, claim: OpenClaim, transfer: Transfer, now: datetime) -> Deposit:
        return Deposit(
            claim_id=claim.id,
            account_id=claim.account_id,
            chain_id=self._options.chain_id,
            tx_hash=claim.tx_hash,
            log_index=transfer.log_index,
            from_address=transfer.sender,
            amount=transfer.amount,
            status="received",
            confirmations=0,
            created_at=now,
            updated_at=now,
        )

    def _refusal(self, transfer: Transfer, wallet: str | None) -> str | None:
        """Why this transfer is not credited to the claiming account, if it is not."""
        if wallet is None:
            return (
                "The account has no wallet: post the hash from the account you signed "
                "in to with the wallet that sent the transfer."
            )
        if transfer.sender != wallet:
            return (
                f"The transfer was sent from {transfer.sender}, not from this account's "
                f"wallet {wallet}; only transfers from your own wallet are credited."
            )
        minimum = self._options.min_deposit
        if transfer.amount < minimum:
            return f"The transfer is below the minimum deposit of {format_usd(minimum)} USDC."
        if transfer.amount > MAX_GRANT:
            return f"The transfer is above the largest deposit of {format_usd(MAX_GRANT)} USDC."
        return None

    async def _credit(self, session: AsyncSession, deposit: Deposit, now: datetime) -> None:
        await self._ledger.credit_in(
            session,
            deposit.account_id,
            deposit.amount,
            kind="deposit",
            reference=reference(deposit.chain_id, deposit.tx_hash, deposit.log_index),
            reason=f"USDC deposit {deposit.tx_hash}",
        )
        deposit.status, deposit.credited_at = "credited", now

    async def _mark_credited(self, claim: OpenClaim) -> None:
        """Mark ``credited`` the deposits of the claim that the ledger already holds."""
        now = self._clock()
        async with self._db.session() as session, session.begin():
            row = await _lock_open_claim(session, claim.id)
            if row is None:
                return
            deposits = await _deposits(session, claim.id)
            wanted = {reference(d.chain_id, d.tx_hash, d.log_index): d for d in _open(deposits)}
            found = await session.scalars(
                select(LedgerEntry.reference).where(
                    LedgerEntry.account_id == claim.account_id,
                    LedgerEntry.kind == "deposit",
                    LedgerEntry.reference.in_(list(wanted)),
                )
            )
            for key in found.all():
                wanted[key].status, wanted[key].credited_at = "credited", now


def _place(deposit: Deposit, sighting: Sighting, now: datetime) -> None:
    """Where the transfer is now (a reorg may have moved it to another block)."""
    deposit.status = "mined"
    deposit.block_number = sighting.receipt.block_number
    deposit.block_hash = sighting.receipt.block_hash
    deposit.confirmations = sighting.confirmations
    deposit.error = None
    deposit.updated_at = now


def _fail(
    row: DepositClaim,
    deposits: Sequence[Deposit],
    error: str,
    now: datetime,
    *,
    status: str = "failed",
) -> None:
    row.status, row.error, row.updated_at = status, error, now
    for deposit in _open(deposits):
        deposit.status, deposit.error, deposit.updated_at = "failed", error, now


def _open(deposits: Sequence[Deposit]) -> list[Deposit]:
    return [deposit for deposit in deposits if deposit.status not in FINAL_DEPOSIT]


async def _lock_open_claim(session: AsyncSession, claim_id: int) -> DepositClaim | None:
    """The claim's row, locked, if the watcher still examines it."""
    row: DepositClaim | None = await session.scalar(
        select(DepositClaim).where(DepositClaim.id == claim_id).with_for_update()
    )
    return row if row is not None and row.status in OPEN_CLAIM else None


async def _deposits(session: AsyncSession, claim_id: int) -> list[Deposit]:
    query = select(Deposit).where(Deposit.claim_id == claim_id).with_for_update()
    return list((await session.scalars(query)).all())
