"""The tables of wallets and USDC: sign-in nonces and wallets, deposits and their
claims, the chain watcher's position, the outbox of chain transactions, permit and
x402 top-ups, and operator payouts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from infermesh.store.base import Base, Money, utcnow


class WalletNonce(Base):
    """A nonce handed out for a wallet sign-in (EIP-4361): usable once, until it expires.

    ``used_at`` is set by the one sign-in that consumes it; expired rows are deleted as
    new nonces are made.
    """

    __tablename__ = "wallet_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]


class Wallet(Base):
    """A wallet address (``0x`` and 40 lowercase hex digits) bound to the account that
    its first sign-in created; one wallet per account."""

    __tablename__ = "wallets"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), unique=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DepositClaim(Base):
    """A transaction hash an account posted as its USDC top-up: the watcher examines it
    until it ends. One account per transaction (``chain_id``, ``tx_hash``).

    ``status``: ``received`` (not seen on chain, or reorganized away), ``submitted``
    (a ``relayed`` transaction the gateway sent for a permit, not mined yet), ``mined``
    (its transfers are rows of ``deposits``), ``failed`` (reverted, no USDC transfer to
    the treasury, not seen in time, or dropped) or ``done`` (every deposit in it is final).
    """

    __tablename__ = "deposit_claims"
    __table_args__ = (
        UniqueConstraint("chain_id", "tx_hash"),
        Index("ix_deposit_claims_account_created", "account_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(String(500))
    relayed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deposit(Base):
    """One USDC transfer to the treasury (a log of a claimed transaction), credited to
    the claiming account once it has enough confirmations; ``amount`` in micro-USD.

    ``status``: ``received`` (its transaction left the chain in a reorg), ``mined``,
    ``credited`` (final) or ``failed`` (final, ``error`` says why).
    """

    __tablename__ = "deposits"
    __table_args__ = (UniqueConstraint("chain_id", "tx_hash", "log_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    claim_id: Mapped[int] = mapped_column(
        ForeignKey("deposit_claims.id", ondelete="CASCADE"), index=True
    )
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    chain_id: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)
    from_address: Mapped[str] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16))
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    block_hash: Mapped[str | None] = mapped_column(String(66))
    confirmations: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    credited_at: Mapped[datetime | None]


class PaymentWatcher(Base):
    """Which gateway watches the chain for deposits (``owner``), until its lease ends."""

    __tablename__ = "payment_watchers"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime] = mapped_column()


class ChainTx(Base):
    """A transaction the gateway sends (a relayed permit or transfer, a payout), signed
    and stored before it is broadcast: a restart broadcasts the same bytes again and
    never signs a second transaction for the same purpose.

    ``status``: ``signed`` (stored, maybe not broadcast), ``sent`` (the node took it),
    ``mined``, ``final`` (enough confirmations), ``failed`` (reverted) or ``dropped``
    (its nonce was used by another transaction: it can never be mined).
    """

    __tablename__ = "chain_txs"
    __table_args__ = (
        UniqueConstraint("chain_id", "sender", "nonce"),
        UniqueConstraint("chain_id", "tx_hash", name="uq_chain_txs_chain_id_tx_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    sender: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(String(16))
    to_address: Mapped[str] = mapped_column(String(42))
    raw_tx: Mapped[str] = mapped_column(Text)
    tx_hash: Mapped[str] = mapped_column(String(66))
    status: Mapped[str] = mapped_column(String(16), index=True)
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    stale_since_block: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PermitTopup(Base):
    """An EIP-2612 permit an account posted as a top-up, relayed as two transactions
    (``permit``, then ``transferFrom`` to the treasury, whose hash is the claim's). A
    permit is used once: (``chain_id``, ``owner``, ``nonce``) is unique."""

    __tablename__ = "permit_topups"
    __table_args__ = (UniqueConstraint("chain_id", "owner", "nonce"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    owner: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[int] = mapped_column(BigInteger)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    value: Mapped[int] = mapped_column(Money)
    deadline: Mapped[int] = mapped_column(BigInteger)
    claim_id: Mapped[int] = mapped_column(ForeignKey("deposit_claims.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class X402Payment(Base):
    """An x402 payment an account posted as a top-up: an EIP-3009 authorization the
    relayer settles with ``transferWithAuthorization`` (whose hash is the claim's). An
    authorization is used once: (``chain_id``, ``payer``, ``nonce``) is unique, and the
    row is written before the transaction is broadcast."""

    __tablename__ = "x402_payments"
    __table_args__ = (UniqueConstraint("chain_id", "payer", "nonce"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    payer: Mapped[str] = mapped_column(String(42))
    nonce: Mapped[str] = mapped_column(String(66))
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    value: Mapped[int] = mapped_column(Money)
    valid_before: Mapped[int] = mapped_column(BigInteger)
    claim_id: Mapped[int] = mapped_column(ForeignKey("deposit_claims.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PayoutWallet(Base):
    """The wallet an operator account is paid to, bound by a signature of that wallet."""

    __tablename__ = "payout_wallets"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(String(42))
    bound_at: Mapped[datetime] = mapped_column(default=utcnow)


class Payout(Base):
    """One USDC transfer from the treasury to an operator's payout wallet, for earnings
    debited from its balance (a ``payout`` ledger entry) when the transfer was signed.

    ``status``: ``sent`` (until its transaction is final), ``paid``, or ``failed`` (the
    transaction reverted or was dropped; a ``payout_refund`` entry gave the money back).
    An operator has at most one ``sent`` payout at a time.
    """

    __tablename__ = "payouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    chain_id: Mapped[int] = mapped_column(BigInteger)
    address: Mapped[str] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(Money)
    tx_id: Mapped[int] = mapped_column(ForeignKey("chain_txs.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    paid_at: Mapped[datetime | None]
