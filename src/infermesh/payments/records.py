"""What the deposit service hands out: plain data, no database rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

OPEN_CLAIM = ("received", "submitted", "mined")
"""Claims the watcher still examines."""
FINAL_DEPOSIT = ("credited", "failed")
"""Deposits that never change again."""


@dataclass(frozen=True, slots=True)
class DepositOptions:
    """Which transfers are deposits (``usdc``, whose EIP-712 domain has ``usdc_name`` and
    ``usdc_version``, to ``treasury`` on ``chain_id``, at least
    ``min_deposit`` micro-USD), after how many ``confirmations`` they are credited, how
    long a claimed transaction may stay unseen, and how many unseen ones an account may
    have claimed at once."""

    chain_id: int
    usdc: str
    treasury: str
    confirmations: int = 5
    min_deposit: int = 1_000_000
    claim_ttl: timedelta = timedelta(hours=1)
    max_open_claims: int = 20
    usdc_name: str = "USD Coin"
    usdc_version: str = "2"


@dataclass(frozen=True, slots=True)
class OpenClaim:
    """A claimed transaction the watcher still examines."""

    id: int
    account_id: int
    tx_hash: str
    created_at: datetime
    relayed: bool = False


@dataclass(frozen=True, slots=True)
class DepositRecord:
    """One deposit as its owner sees it. A claimed transaction in which no transfer was
    found yet (or that failed as a whole) is one record without ``log_index``."""

    id: str
    claim_id: int
    tx_hash: str
    log_index: int | None
    amount: int
    status: str
    confirmations: int
    error: str | None
    created_at: datetime
    credited_at: datetime | None
