"""Accounts and their API keys: creation, listing, revocation, rotation, authentication."""

from __future__ import annotations

from infermesh.accounts.records import (
    AccountExists,
    AccountRecord,
    CreatedKey,
    KeyRecord,
    KeyRevoked,
    Principal,
)
from infermesh.accounts.service import AccountService

__all__ = [
    "AccountExists",
    "AccountRecord",
    "AccountService",
    "CreatedKey",
    "KeyRecord",
    "KeyRevoked",
    "Principal",
]
