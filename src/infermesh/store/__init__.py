"""The store: the async database engine, its tables and Alembic migrations."""

from __future__ import annotations

from infermesh.store.database import Database, head_revision, normalize_url, transaction_lock
from infermesh.store.tables import (
    Account,
    ApiKey,
    AsyncJob,
    Balance,
    Base,
    Deposit,
    DepositClaim,
    Hold,
    LedgerEntry,
    PaymentWatcher,
    RateLimitSetting,
    UsageEntry,
    Wallet,
    WalletNonce,
    WebhookDelivery,
    WebhookSecret,
    utcnow,
)

__all__ = [
    "Account",
    "ApiKey",
    "AsyncJob",
    "Balance",
    "Base",
    "Database",
    "Deposit",
    "DepositClaim",
    "Hold",
    "LedgerEntry",
    "PaymentWatcher",
    "RateLimitSetting",
    "UsageEntry",
    "Wallet",
    "WalletNonce",
    "WebhookDelivery",
    "WebhookSecret",
    "head_revision",
    "normalize_url",
    "transaction_lock",
    "utcnow",
]
