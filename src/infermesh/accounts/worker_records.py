"""What the worker token service hands out: plain frozen records, never ORM objects,
and the arithmetic of a token's scope."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

WorkerStatus = Literal["revoked", "online", "offline"]

DEFAULT_MAX_CONNECTIONS = 2
DEFAULT_MAX_SLOTS = 64


@dataclass(frozen=True, slots=True)
class WorkerScope:
    """What a worker token allows: how many live connections, how many job slots one
    connection may announce across its models, and which catalog models (None: any)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_slots: int = DEFAULT_MAX_SLOTS
    allowed_models: tuple[str, ...] | None = None

    def allows(self, model: str) -> bool:
        """Whether the token may serve ``model`` (the catalog is checked elsewhere)."""
        return self.allowed_models is None or model in self.allowed_models

    def fit_slots(self, requested: Sequence[tuple[str, int]]) -> SlotFit:
        """Fit the job slots a connection announces per model into ``max_slots``.

        Models keep their order. Past the first ``max_slots`` models none fits; the
        others keep their slots if the total fits, else each keeps one and the rest of
        the budget is shared in proportion to what each asked beyond one (slots lost to
        rounding go to the largest remainders, the first model on a tie).
        """
        budget = self.max_slots
        kept, dropped = list(requested[:budget]), [model for model, _ in requested[budget:]]
        asked = sum(slots for _, slots in kept)
        if asked <= budget:
            return SlotFit(dict(kept), dropped)
        spare, extra = budget - len(kept), asked - len(kept)
        shares = [divmod((slots - 1) * spare, extra) for _, slots in kept]
        left = spare - sum(share for share, _ in shares)
        by_remainder = sorted(range(len(kept)), key=lambda index: -shares[index][1])
        bonus = set(by_remainder[:left])
        slots = {
            model: 1 + shares[index][0] + int(index in bonus)
            for index, (model, _) in enumerate(kept)
        }
        return SlotFit(slots, dropped)


@dataclass(frozen=True, slots=True)
class SlotFit:
    """The job slots one connection gets per model, and the models left without any."""

    slots: dict[str, int]
    dropped: list[str]


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
    scope: WorkerScope
    last_connected_at: datetime | None = None

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
    scope: WorkerScope = WorkerScope()
