"""What the ledger reads and writes, as plain values: balances, entries, settlements,
slices and the usage row of a request (built per request, so a slotted dataclass
rather than an ORM object; the ledger writes it with the batch it belongs to)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime


@dataclass(frozen=True, slots=True)
class BalanceRecord:
    """An account's money, in micro-USD: all of it, the part held, and the rest."""

    account_id: int
    balance: int
    held: int

    @property
    def available(self) -> int:
        return max(self.balance - self.held, 0)


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """One ledger entry as it can be shown."""

    id: int
    kind: str
    balance_change: int
    held_change: int
    balance_after: int
    reference: str
    reason: str | None
    created_at: datetime


BASIS_POINTS = 10_000


@dataclass(frozen=True, slots=True)
class Earning:
    """Who operates the worker that served a request, and their share of its charge."""

    account_id: int
    share_bps: int

    def of(self, charged: int) -> int:
        """The operator's part of ``charged`` (rounded down; the rest stays with the house)."""
        return charged * self.share_bps // BASIS_POINTS


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a request ends for the ledger: its cost, the operator's share, its usage row."""

    hold_id: str
    account_id: int
    cost: int
    earning: Earning | None
    usage: UsageRow


@dataclass(frozen=True, slots=True)
class Settled:
    """What a settlement charged, and the account's balance after it."""

    charged: int
    balance: BalanceRecord
    repeated: bool = False


@dataclass(frozen=True, slots=True)
class Reserved:
    """What a slice reservation took from the account, and the account after it."""

    amount: int
    exact: bool
    """The account was short of money: only what was asked for was reserved."""
    balance: BalanceRecord


@dataclass(frozen=True, slots=True)
class SliceCharge:
    """One request settled against a slice (``slice_id`` None: a free request)."""

    slice_id: str | None
    settlement: Settlement


@dataclass(frozen=True, slots=True)
class SliceRelease:
    """Money of a slice given back to the account: ``amount`` of it, or, if ``final``,
    all it still holds (the slice then ends)."""

    slice_id: str
    account_id: int
    reference: str
    amount: int
    final: bool = False


@dataclass(frozen=True, slots=True)
class BatchWritten:
    """What a batch wrote: the balances of the accounts it touched, after it, the
    requests charged less than their cost, and the slices that had ended (expired)."""

    balances: dict[int, BalanceRecord]
    short: dict[str, int]
    ended: set[str]


@dataclass(slots=True)
class UsageRow:
    """The ``usage_records`` row of one request (see :class:`~infermesh.store.UsageEntry`):
    counts, ids and timings, never content. ``cost`` and ``operator_earning`` are
    filled in when the request is charged."""

    id: str
    account_id: int
    request_id: str
    model: str
    status: str
    created_at: datetime
    key_id: str | None = None
    node_id: str | None = None
    worker_id: str | None = None
    operator_account_id: int | None = None
    stream: bool = False
    error_code: str | None = None
    finish_reason: str | None = None
    endpoint: str = "chat.completions"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: int = 0
    operator_earning: int = 0
    latency_ms: int = 0

    def as_row(self) -> dict[str, object]:
        """The row's columns, for an insert."""
        return {name: getattr(self, name) for name in _USAGE_COLUMNS}


_USAGE_COLUMNS = tuple(item.name for item in fields(UsageRow))
