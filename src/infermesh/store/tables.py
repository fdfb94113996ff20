"""The tables of the system of record, as SQLAlchemy 2 typed declarative classes.

Every table here is created by a migration in ``store/migrations/versions``; a new
table means a new class here (or in a module importing :class:`Base`, re-exported here so
that ``Base.metadata`` knows it wherever tables are imported) and a new migration. Times
are stored as timezone-aware UTC. The tables of wallets and USDC are in
:mod:`.payment_tables`, the base and column types in :mod:`.base`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from infermesh.store.base import NAMING_CONVENTION as NAMING_CONVENTION
from infermesh.store.base import Base as Base
from infermesh.store.base import Money as Money
from infermesh.store.base import UTCDateTime as UTCDateTime
from infermesh.store.base import utcnow as utcnow
from infermesh.store.payment_tables import ChainTx as ChainTx
from infermesh.store.payment_tables import Deposit as Deposit
from infermesh.store.payment_tables import DepositClaim as DepositClaim
from infermesh.store.payment_tables import PaymentWatcher as PaymentWatcher
from infermesh.store.payment_tables import Payout as Payout
from infermesh.store.payment_tables import PayoutWallet as PayoutWallet
from infermesh.store.payment_tables import PermitTopup as PermitTopup
from infermesh.store.payment_tables import Wallet as Wallet
from infermesh.store.payment_tables import WalletNonce as WalletNonce
from infermesh.store.payment_tables import X402Payment as X402Payment

_LedgerId = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only


class Account(Base):
    """Someone who holds API keys (and, later, credits)."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    tier: Mapped[str] = mapped_column(String(32), default="free", server_default="free")
    created_at: Mapped[datetime] = mapped_column(
        default=utcnow, server_default=func.current_timestamp()
    )


class ApiKey(Base):
    """An API key of an account; only its SHA-256 hash and a short prefix are kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(12))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(
        default=utcnow, server_default=func.current_timestamp()
    )
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class RegisteredWorker(Base):
    """A worker of a GPU operator: its token (SHA-256 hash and prefix only), what the
    token allows, and the worker's state. ``models`` is what it last served;
    ``allowed_models`` what it may serve (None: any catalog model)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    operator_account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(
        default=utcnow, server_default=func.current_timestamp()
    )
    revoked_at: Mapped[datetime | None]
    last_connected_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime | None]
    online: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    node_id: Mapped[str | None] = mapped_column(String(200))
    models: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    jobs_served: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    jobs_failed: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The token's scope: live connections, job slots per connection, catalog models.
    max_connections: Mapped[int] = mapped_column(Integer, default=2, server_default="2")
    max_slots: Mapped[int] = mapped_column(Integer, default=64, server_default="64")
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))


class Balance(Base):
    """An account's balance and the part of it held by requests in flight (micro-USD).

    A cache of the ledger, updated in the same transaction as every entry; the row is
    also what concurrent holds lock.
    """

    __tablename__ = "balances"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_not_negative"),
        CheckConstraint("held >= 0", name="held_not_negative"),
    )

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    balance: Mapped[int] = mapped_column(Money, default=0, server_default="0")
    held: Mapped[int] = mapped_column(Money, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(
        default=utcnow, server_default=func.current_timestamp()
    )


class LedgerEntry(Base):
    """One append-only entry: how it changed an account's balance and held amount.

    ``reference`` names the cause (a request, a grant, a deposit); an account has at
    most one entry of a kind per reference, so a retried settlement cannot charge twice.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (UniqueConstraint("account_id", "kind", "reference"),)

    id: Mapped[int] = mapped_column(_LedgerId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    balance_change: Mapped[int] = mapped_column(Money)
    held_change: Mapped[int] = mapped_column(Money)
    balance_after: Mapped[int] = mapped_column(Money)
    held_after: Mapped[int] = mapped_column(Money)
    reference: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(
        default=utcnow, server_default=func.current_timestamp()
    )


class Hold(Base):
    """Credit held for one request until it is settled, released or expired."""

    __tablename__ = "holds"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    amount: Mapped[int] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class UsageEntry(Base):
    """What one request used and cost: counts, ids and timings, never content."""

    __tablename__ = "usage_records"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    request_id: Mapped[str] = mapped_column(String(200))
    key_id: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    node_id: Mapped[str | None] = mapped_column(String(200))
    worker_id: Mapped[str | None] = mapped_column(String(32), index=True)
    operator_account_id: Mapped[int | None] = mapped_column(Integer)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    endpoint: Mapped[str] = mapped_column(String(32), default="chat.completions")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[int] = mapped_column(Money, default=0)
    operator_earning: Mapped[int] = mapped_column(Money, default=0)
    latency_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RateLimitSetting(Base):
    """Rate limits set by an admin for a tier, an account or a key.

    ``limits`` holds only the limits set here (a number or ``"unlimited"``); the others
    come from elsewhere. ``subject`` is the tier name, the account id or the key id.
    """

    __tablename__ = "rate_limits"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    limits: Mapped[dict[str, int | str]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(
        default=utcnow, server_default=func.current_timestamp()
    )


class AsyncJob(Base):
    """A chat request queued to run later; its result is kept until ``purge_at``.

    ``request`` (the prompt) is kept only while the job may still run: it is set to
    NULL in the transaction that gives the job a final status.
    """

    __tablename__ = "async_jobs"
    __table_args__ = (
        Index("ix_async_jobs_account_created", "account_id", "created_at", "id"),
        Index("ix_async_jobs_account_status", "account_id", "status", "created_at", "id"),
        Index("ix_async_jobs_status_created", "status", "created_at", "id"),
        Index("ix_async_jobs_status_deadline", "status", "deadline_at"),
        Index("ix_async_jobs_status_completed", "status", "completed_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    key_id: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(500))
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    hold_id: Mapped[str | None] = mapped_column(String(100))
    held: Mapped[int] = mapped_column(Money, default=0, server_default="0")
    available_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    purge_at: Mapped[datetime | None] = mapped_column(index=True)


class WebhookDelivery(Base):
    """One event of a job to POST to its webhook URL; ``id`` is the event's stable id.

    Written in the transaction that ends the job; deleted with the job when it is
    purged.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next_attempt", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("async_jobs.id", ondelete="CASCADE"), index=True
    )
    account_id: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(2000))
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16))
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(String(500))
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


class WebhookSecret(Base):
    """An account's webhook signing secret (``whsec_…``): the HMAC key of its events,
    kept as it is because signing needs it; shown to the account once, when made."""

    __tablename__ = "webhook_secrets"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Channel(Base):
    """A named message board, made by its first post. ``public`` channels are open to
    every account of the gateway; ``private`` ones to their owner and its members."""

    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    visibility: Mapped[str] = mapped_column(String(16))
    owner_account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChannelMember(Base):
    """An account the owner of a private channel let in."""

    __tablename__ = "channel_members"

    channel_id: Mapped[int] = mapped_column(
        ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True
    )
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChannelMessage(Base):
    """One message on a channel: its author account, content and metadata (user data,
    stored on purpose), kept until the channel's retention drops it."""

    __tablename__ = "channel_messages"
    __table_args__ = (Index("ix_channel_messages_channel_id_id", "channel_id", "id"),)

    id: Mapped[int] = mapped_column(_LedgerId, primary_key=True, autoincrement=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    content: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DashboardSession(Base):
    """A signed-in browser of the dashboard: only the SHA-256 of its cookie is kept.

    It belongs to an account (signed in with one of its API keys, or with its wallet)
    or is the admin's (``admin``, no account). ``csrf`` is the token every form of the
    session must send back. A session signed in with a key ends when the key is revoked.
    """

    __tablename__ = "dashboard_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    key_id: Mapped[str | None] = mapped_column(String(32))
    wallet: Mapped[str | None] = mapped_column(String(42))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
