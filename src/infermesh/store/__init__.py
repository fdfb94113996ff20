"""The store: the async database engine, its tables and Alembic migrations."""

from __future__ import annotations

from infermesh.store.database import Database, head_revision, normalize_url, transaction_lock
from infermesh.store.tables import Account, ApiKey, Base, utcnow

__all__ = [
    "Account",
    "ApiKey",
    "Base",
    "Database",
    "head_revision",
    "normalize_url",
    "transaction_lock",
    "utcnow",
]
