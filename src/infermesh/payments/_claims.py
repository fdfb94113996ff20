"""Claimed transactions and their deposits as rows: adding a claim, reading them back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.errors import Conflict, NotFound, RateLimited
from infermesh.payments.records import OPEN_CLAIM, DepositOptions, DepositRecord, OpenClaim
from infermesh.store import Database, Deposit, DepositClaim


class ClaimBook:
    """The ``deposit_claims`` of one chain, and the deposits found in them."""

    def __init__(
        self, db: Database, options: DepositOptions, *, clock: Callable[[], datetime]
    ) -> None:
        self._db = db
        self._options = options
        self._clock = clock

    async def add(self, account_id: int, tx_hash: str) -> int:
        """The id of ``account_id``'s claim of ``tx_hash``, made if new (an ``expired``
        one of its own is looked for again).

        :class:`Conflict` when another account claimed it; :class:`RateLimited` when the
        account has ``max_open_claims`` transactions not yet seen on chain."""
        try:
            async with self._db.session() as session, session.begin():
                found = await self._find(session, tx_hash)
                if found is None:
                    await self._check_room(session, account_id)
                    now = self._clock()
                    claim = DepositClaim(
                        chain_id=self._options.chain_id,
                        tx_hash=tx_hash,
                        account_id=account_id,
                        status="received",
                        created_at=now,
                        updated_at=now,
                    )
                    session.add(claim)
                    await session.flush()
                    return claim.id
                if found.account_id == account_id and found.status == "expired":
                    await self._reopen(session, found)
        except IntegrityError:  # the same transaction, claimed at the same moment
            async with self._db.session(read_only=True) as session:
                found = await self._find(session, tx_hash)
            if found is None:
                raise
        if found.account_id != account_id:
            raise Conflict(
                "This transaction was already posted by another account; a deposit is "
                "credited to the account whose wallet sent it.",
                param="tx_hash",
                code="deposit_claimed",
            )
        return found.id

    async def _reopen(self, session: AsyncSession, claim: DepositClaim) -> None:
        """Look for an expired claim's transaction again, as if it were posted now (an
        expired claim has nothing credited: its deposits are found anew)."""
        await self._check_room(session, claim.account_id)
        await session.execute(delete(Deposit).where(Deposit.claim_id == claim.id))
        now = self._clock()
        claim.status, claim.error = "received", None
        claim.created_at = claim.updated_at = now

    async def _find(self, session: AsyncSession, tx_hash: str) -> DepositClaim | None:
        query = select(DepositClaim).where(
            DepositClaim.chain_id == self._options.chain_id, DepositClaim.tx_hash == tx_hash
        )
        found: DepositClaim | None = await session.scalar(query)
        return found

    async def _check_room(self, session: AsyncSession, account_id: int) -> None:
        query = select(func.count()).where(
            DepositClaim.account_id == account_id,
            DepositClaim.status.in_(("received", "submitted")),
        )
        unseen: int = await session.scalar(query) or 0
        if unseen >= self._options.max_open_claims:
            raise RateLimited(
                f"This account already has {unseen} posted transactions not yet seen on "
                "chain; wait until they are, or fail as not found.",
                code="too_many_deposit_claims",
                retry_after=60,
            )

    async def claim_of(self, account_id: int, record_id: str) -> int:
        """The claim of the account's deposit ``record_id`` (``dep_N`` or ``claim_N``);
        :class:`NotFound` if it is not one of the account's."""
        kind, _, number = record_id.partition("_")
        found: int | None = None
        if number.isdigit() and len(number) <= 18:
            async with self._db.session(read_only=True) as session:
                if kind == "dep":
                    found = await session.scalar(
                        select(Deposit.claim_id).where(
                            Deposit.id == int(number), Deposit.account_id == account_id
                        )
                    )
                elif kind == "claim":
                    found = await session.scalar(
                        select(DepositClaim.id).where(
                            DepositClaim.id == int(number), DepositClaim.account_id == account_id
                        )
                    )
        if found is None:
            raise NotFound(f"No deposit '{record_id}' to page after.", param="after")
        return found

    async def open(self) -> list[OpenClaim]:
        """The claims the watcher still examines, oldest first."""
        query = (
            select(DepositClaim)
            .where(
                DepositClaim.chain_id == self._options.chain_id,
                DepositClaim.status.in_(OPEN_CLAIM),
            )
            .order_by(DepositClaim.id)
        )
        async with self._db.session(read_only=True) as session:
            rows = (await session.scalars(query)).all()
        return [
            OpenClaim(row.id, row.account_id, row.tx_hash, row.created_at, row.relayed)
            for row in rows
        ]

    async def records(
        self,
        account_id: int,
        *,
        claim_id: int | None = None,
        limit: int = 100,
        before_claim: int | None = None,
    ) -> list[DepositRecord]:
        """The deposits of the account's ``limit`` newest claims, newest first (only
        those of ``claim_id`` if given; only claims older than ``before_claim`` if given)."""
        query = select(DepositClaim).where(DepositClaim.account_id == account_id)
        if claim_id is not None:
            query = query.where(DepositClaim.id == claim_id)
        if before_claim is not None:
            query = query.where(DepositClaim.id < before_claim)
        query = query.order_by(DepositClaim.id.desc()).limit(limit)
        async with self._db.session(read_only=True) as session:
            claims = (await session.scalars(query)).all()
            ids = [claim.id for claim in claims]
            deposits = (
                await session.scalars(
                    select(Deposit).where(Deposit.claim_id.in_(ids)).order_by(Deposit.log_index)
                )
            ).all()
        return claim_records(claims, deposits)


def claim_records(
    claims: Sequence[DepositClaim], deposits: Sequence[Deposit]
) -> list[DepositRecord]:
    by_claim: dict[int, list[Deposit]] = {}
    for deposit in deposits:
        by_claim.setdefault(deposit.claim_id, []).append(deposit)
    records: list[DepositRecord] = []
    for claim in claims:
        found = by_claim.get(claim.id)
        if found:
            records.extend(_deposit_record(deposit) for deposit in found)
        else:
            records.append(_claim_record(claim))
    return records


def _deposit_record(row: Deposit) -> DepositRecord:
    return DepositRecord(
        id=f"dep_{row.id}",
        claim_id=row.claim_id,
        tx_hash=row.tx_hash,
        log_index=row.log_index,
        amount=row.amount,
        status=row.status,
        confirmations=row.confirmations,
        error=row.error,
        created_at=row.created_at,
        credited_at=row.credited_at,
    )


def _claim_record(row: DepositClaim) -> DepositRecord:
    return DepositRecord(
        id=f"claim_{row.id}",
        claim_id=row.id,
        tx_hash=row.tx_hash,
        log_index=None,
        amount=0,
        status=row.status,
        confirmations=0,
        error=row.error,
        created_at=row.created_at,
        credited_at=None,
    )
