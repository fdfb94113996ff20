"""What the worker token service hands out: plain frozen records, never ORM objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

WorkerStatus = Literal["revoked", "online", "offline"]


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker as it can be listed: everything but its token."""

    id: str
    name: str
    operator: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    online: bool
    last_seen_at: datetime | None
    node_id: str | None
    models: tuple[str, ...]
    jobs_served: int
    jobs_failed: int

    @property
    def revoked(self) -> bool:
        """Whether the worker's token was revoked."""
        return self.revoked_at is not None

    @property
    def status(self) -> WorkerStatus:
        """``"revoked"``, else ``"online"`` while connected to a gateway, else ``"offline"``."""
        if self.revoked:
            return "revoked"
        return "online" if self.online else "offline"


@dataclass(frozen=True, slots=True)
class CreatedWorkerToken:
    """A worker just created: its raw token (shown once, never stored) and its record."""

    token: str
    record: WorkerRecord


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Which worker is connecting: the result of authenticating a worker token."""

    worker_id: str
    name: str
    operator_account_id: int
    operator_name: str
