"""Transactions the gateway sends (the relayer's permits and transfers, the treasury's
payouts): signed with the sender's next nonce and stored in ``chain_txs`` in the same
database transaction as what they pay for, then broadcast. A crash between the two
leaves a stored transaction that :meth:`Outbox.advance` broadcasts again, byte for byte:
nothing is ever signed twice for one purpose, and one nonce carries one transaction.

Nonces are handed out under a lock per sender (an advisory lock on PostgreSQL; SQLite's
write lock), from the larger of the chain's pending count and the highest stored nonce
plus one, so gateways and ``infermesh payouts run`` sharing one database never reuse one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.payments.chain import Chain, ChainUnavailable, Fees, TransactionRejected
from infermesh.store import ChainTx, Database, transaction_lock, utcnow

logger = logging.getLogger(__name__)

OPEN_TX = ("signed", "sent", "mined")
"""Transactions :meth:`Outbox.advance` still follows."""
ENDED_TX = ("final", "failed", "dropped")


class Signer:
    """A key the gateway sends transactions with (the relayer's, the treasury's)."""

    def __init__(self, private_key: str) -> None:
        self._account: LocalAccount = Account.from_key(private_key)
        self.address: str = self._account.address.lower()

    def sign(self, tx: dict[str, Any]) -> tuple[str, str]:
        """The raw signed transaction and its hash, as ``0x`` hex."""
        signed = self._account.sign_transaction(tx)
        return "0x" + bytes(signed.raw_transaction).hex(), "0x" + bytes(signed.hash).hex()


@dataclass(frozen=True, slots=True)
class Call:
    """One contract call to send: ``purpose`` names it in ``chain_txs``."""

    purpose: str
    to: str
    data: str
    gas: int


@dataclass(frozen=True, slots=True)
class StoredTx:
    """A signed transaction, stored and not yet known to be broadcast."""

    id: int
    tx_hash: str
    raw_tx: str
    nonce: int


class Outbox:
    """Stores, broadcasts and follows the transactions of one chain."""

    def __init__(
        self,
        db: Database,
        chain: Chain,
        *,
        chain_id: int,
        confirmations: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self.chain = chain
        self.chain_id = chain_id
        self._confirmations = confirmations
        self._clock = clock

    async def store(
        self, session: AsyncSession, signer: Signer, calls: Sequence[Call], fees: Fees
    ) -> list[StoredTx]:
        """Sign ``calls`` with ``signer``'s next nonces and add them to the caller's
        transaction; :meth:`broadcast` them once it commits. :class:`ChainUnavailable`
        when the node cannot say the sender's nonce."""
        await transaction_lock(session, f"infermesh.outbox.{self.chain_id}.{signer.address}")
        highest = await session.scalar(
            select(func.max(ChainTx.nonce)).where(
                ChainTx.chain_id == self.chain_id, ChainTx.sender == signer.address
            )
        )
        nonce = await self.chain.nonce(signer.address, pending=True)
        if highest is not None:
            nonce = max(nonce, int(highest) + 1)
        now = self._clock()
        stored: list[tuple[ChainTx, int]] = []
        for call in calls:
            raw, tx_hash = signer.sign(
                {
                    "type": 2,
                    "chainId": self.chain_id,
                    "nonce": nonce,
                    "to": to_checksum_address(call.to),
                    "value": 0,
                    "data": call.data,
                    "gas": call.gas,
                    "maxFeePerGas": fees.max_fee,
                    "maxPriorityFeePerGas": fees.priority_fee,
                }
            )
            row = ChainTx(
                chain_id=self.chain_id,
                sender=signer.address,
                nonce=nonce,
                purpose=call.purpose,
                to_address=call.to.lower(),
                raw_tx=raw,
                tx_hash=tx_hash,
                status="signed",
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            stored.append((row, nonce))
            nonce += 1
        await session.flush()
        return [StoredTx(row.id, row.tx_hash, row.raw_tx, n) for row, n in stored]

    async def broadcast(self, txs: Sequence[StoredTx]) -> None:
        """Send stored transactions to the node, in nonce order. A refusal or an
        unreachable node is logged; :meth:`advance` tries again."""
        for tx in sorted(txs, key=lambda t: t.nonce):
            try:
                await self.chain.send_raw(tx.raw_tx)
            except TransactionRejected as exc:
                logger.warning("the node refused transaction %s: %s", tx.tx_hash, exc.reason)
                continue
            except ChainUnavailable as exc:
                logger.warning("broadcasting %s: %s; will try again", tx.tx_hash, exc.message)
                return
            await self._set(tx.id, "sent", only_from=("signed",))

    async def advance(self) -> None:
        """One look at every transaction not yet ended: broadcast again those not mined,
        mark mined, final (``confirmations`` deep, still canonical), failed (reverted
        and final) or dropped (its nonce used by another transaction, for good)."""
        async with self._db.session(read_only=True) as session:
            rows = (
                await session.scalars(
                    select(ChainTx)
                    .where(ChainTx.chain_id == self.chain_id, ChainTx.status.in_(OPEN_TX))
                    .order_by(ChainTx.sender, ChainTx.nonce)
                )
            ).all()
        if not rows:
            return
        head = await self.chain.block_number()
        mined_nonces: dict[str, int] = {}
        for row in rows:
            await self._advance(row, head, mined_nonces)

    async def statuses(self, tx_hashes: Sequence[str]) -> dict[str, str]:
        """The status of each of these stored transactions (absent: not ours)."""
        if not tx_hashes:
            return {}
        async with self._db.session(read_only=True) as session:
            found = await session.execute(
                select(ChainTx.tx_hash, ChainTx.status).where(
                    ChainTx.chain_id == self.chain_id, ChainTx.tx_hash.in_(list(tx_hashes))
                )
            )
        return {tx_hash: status for tx_hash, status in found.all()}

    async def _advance(self, row: ChainTx, head: int, mined_nonces: dict[str, int]) -> None:
        receipt = await self.chain.receipt(row.tx_hash)
        if receipt is None:
            if row.sender not in mined_nonces:
                mined_nonces[row.sender] = await self.chain.nonce(row.sender, pending=False)
            if mined_nonces[row.sender] > row.nonce:
                await self._stale(row, head)
                return
            await self._rebroadcast(row)
            return
        depth = head - receipt.block_number + 1
        final = depth >= self._confirmations and (
            await self.chain.block_hash(receipt.block_number) == receipt.block_hash
        )
        if not final:
            await self._set(row.id, "mined", block_number=receipt.block_number)
        elif receipt.succeeded:
            await self._set(row.id, "final", block_number=receipt.block_number)
        else:
            await self._set(
                row.id, "failed", block_number=receipt.block_number, error="reverted on chain"
            )
            logger.error("transaction %s (%s) reverted on chain", row.tx_hash, row.purpose)

    async def _stale(self, row: ChainTx, head: int) -> None:
        """Another transaction took this one's nonce: once that is ``confirmations``
        deep, this one can never be mined."""
        if row.stale_since_block is None:
            await self._set(row.id, row.status, stale_since_block=head)
        elif head - row.stale_since_block + 1 >= self._confirmations:
            await self._set(row.id, "dropped", error="its nonce was used by another transaction")
            logger.error("transaction %s (%s) was dropped", row.tx_hash, row.purpose)

    async def _rebroadcast(self, row: ChainTx) -> None:
        try:
            await self.chain.send_raw(row.raw_tx)
        except TransactionRejected as exc:
            # "already known" is the usual answer: the node still has it in its pool.
            logger.debug("re-broadcast of %s: %s", row.tx_hash, exc.reason)
            return
        if row.status != "sent":
            await self._set(row.id, "sent")

    async def _set(
        self,
        tx_id: int,
        status: str,
        *,
        only_from: tuple[str, ...] = OPEN_TX,
        **values: object,
    ) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(ChainTx)
                .where(ChainTx.id == tx_id, ChainTx.status.in_(only_from))
                .values(status=status, updated_at=self._clock(), **values)
            )
