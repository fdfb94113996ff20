"""Deposits of all accounts, newest first, for operators (``infermesh payments``)."""

from __future__ import annotations

from sqlalchemy import select

from infermesh.payments._claims import claim_records
from infermesh.payments.records import DepositRecord
from infermesh.store import Account, Database, Deposit, DepositClaim


async def recent_deposits(db: Database, *, limit: int = 20) -> list[tuple[str, DepositRecord]]:
    """The deposits of the ``limit`` newest claims (any account, any chain), each with
    its account's name; newest claim first."""
    query = (
        select(DepositClaim, Account.name)
        .join(Account, Account.id == DepositClaim.account_id)
        .order_by(DepositClaim.id.desc())
        .limit(limit)
    )
    async with db.session(read_only=True) as session:
        rows = (await session.execute(query)).all()
        ids = [claim.id for claim, _ in rows]
        deposits = (
            await session.scalars(
                select(Deposit).where(Deposit.claim_id.in_(ids)).order_by(Deposit.log_index)
            )
        ).all()
    found: list[tuple[str, DepositRecord]] = []
    for claim, name in rows:
        own = [deposit for deposit in deposits if deposit.claim_id == claim.id]
        found.extend((name, record) for record in claim_records([claim], own))
    return found
