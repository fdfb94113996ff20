"""Credits API objects: balances, usage records, grants (admin)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictInt

from infermesh.protocol.base import WireModel


class Amount(WireModel):
    """An amount of money: exact integer micro-USD, and USD and credits for display."""

    micro_usd: int
    usd: str
    credits: float


class UsageTotals(WireModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: Amount


class RecentUsage(WireModel):
    last_24h: UsageTotals
    last_30d: UsageTotals


class CreditBalance(WireModel):
    """``GET /v1/credits/balance``: what the account has, holds and has spent lately."""

    object: Literal["credit_balance"] = "credit_balance"
    account: str
    tier: str
    balance: Amount
    held: Amount
    available: Amount
    credit_usd: str = Field(description="what one display credit is worth in USD")
    usage: RecentUsage


class UsageRecordObject(WireModel):
    """One request: counts, cost and timings only; never message content."""

    object: Literal["usage_record"] = "usage_record"
    id: str
    request_id: str
    created: int
    model: str
    key_id: str | None
    node_id: str | None
    stream: bool
    status: str
    error_code: str | None
    finish_reason: str | None
    endpoint: str = Field(
        description="the API the request came through: chat.completions, responses, "
        "messages or embeddings"
    )
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: Amount
    latency_ms: int


class UsagePage(WireModel):
    """``GET /v1/usage``: newest first; pass ``after=<last_id>`` for the next page."""

    object: Literal["list"] = "list"
    data: list[UsageRecordObject]
    has_more: bool
    last_id: str | None


class GrantRequest(WireModel):
    """``POST /admin/accounts/{name}/grants``: add credit to an account."""

    amount_usd: str | None = Field(default=None, description='USD, e.g. "5" or "0.25"')
    amount_micro_usd: StrictInt | None = None
    reason: str = Field(min_length=1, max_length=500)
    reference: str | None = Field(
        default=None, max_length=100, description="idempotency key: a grant is made once"
    )


class LedgerEntryObject(WireModel):
    id: int
    kind: str
    balance_change: int
    held_change: int
    balance_after: int
    reference: str
    reason: str | None
    created: int


class AccountCredits(WireModel):
    """``GET /admin/accounts/{name}``: an account's tier, balance and latest entries."""

    object: Literal["account"] = "account"
    id: int
    name: str
    tier: str
    balance: Amount
    held: Amount
    available: Amount
    entries: list[LedgerEntryObject]


class TierUpdate(WireModel):
    tier: str = Field(min_length=1, max_length=32)


class WorkerEarningsObject(WireModel):
    """One registered worker: what it served, what that was billed, what its operator earned."""

    worker_id: str
    name: str
    operator: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    billed: Amount
    earned: Amount
