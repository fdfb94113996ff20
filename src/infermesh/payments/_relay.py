"""What the relayed top-ups (permits, x402 payments) share: the account's wallet they
must come from, and the claim that the deposit watcher follows for the relayer's
transfer."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.errors import Forbidden
from infermesh.store import Database, DepositClaim, Wallet

BIGINT_MAX = 2**63 - 1
"""The largest value a ``BigInteger`` column holds (deadlines are stored clipped to it)."""


async def account_wallet(db: Database, account_id: int) -> str:
    """The wallet the account signed in with; :class:`Forbidden` if it has none."""
    async with db.session(read_only=True) as session:
        wallet = await session.scalar(select(Wallet.address).where(Wallet.account_id == account_id))
    if wallet is None:
        raise Forbidden(
            "This account has no wallet: sign in with the wallet (POST /v1/auth/wallet) "
            "and top up with that account's key.",
            code="no_wallet",
        )
    return wallet


async def add_relayed_claim(
    session: AsyncSession, *, chain_id: int, account_id: int, tx_hash: str, now: datetime
) -> DepositClaim:
    """The claim of the relayer's transfer ``tx_hash`` for the account, ``submitted``,
    added to the caller's transaction (flushed: it has its id)."""
    claim = DepositClaim(
        chain_id=chain_id,
        tx_hash=tx_hash,
        account_id=account_id,
        status="submitted",
        relayed=True,
        created_at=now,
        updated_at=now,
    )
    session.add(claim)
    await session.flush()
    return claim
