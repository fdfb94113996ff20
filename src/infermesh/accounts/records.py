"""What the account service hands out: plain frozen records, never ORM objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from infermesh.errors import InvalidRequest


class AccountExists(InvalidRequest):
    """An account with this name already exists."""

    code = "account_exists"


class KeyRevoked(InvalidRequest):
    """The API key was revoked, so it can't be used or rotated."""

    code = "key_revoked"


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An account."""

    id: int
    name: str
    tier: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as it can be listed: everything but the key itself."""

    id: str
    account_id: int
    account: str
    name: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just created: the raw key (shown once, never stored) and its record."""

    key: str
    record: KeyRecord


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the result of authenticating an API key."""

    key_id: str
    account_id: int
    account_name: str
    tier: str


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """An account as the admin's list shows it: the account and how many keys it has."""

    account: AccountRecord
    active_keys: int
    revoked_keys: int
