"""Charging a request: tier check and hold before dispatch, settlement after."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from infermesh.accounts.records import Principal
from infermesh.billing.ledger import CreditLedger
from infermesh.billing.money import CreditUnit, usd
from infermesh.billing.pricing import Pricing, TokenBound, token_bound
from infermesh.billing.records import (
    BASIS_POINTS,
    BalanceRecord,
    Earning,
    Settled,
    Settlement,
    UsageRow,
)
from infermesh.billing.slices import CreditSlices
from infermesh.billing.tiers import TierPolicy
from infermesh.billing.usage import UsageLog
from infermesh.catalog.spec import ModelSpec
from infermesh.mesh.worker import Operator
from infermesh.protocol.chat import ChatCompletionRequest, CompletionUsage, Usage
from infermesh.store import utcnow

logger = logging.getLogger(__name__)

OutcomeStatus = Literal["succeeded", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class Charge:
    """The billing side of one request: who pays, at what prices, how much is held.

    ``id`` (the completion id) names the hold, the ledger entries and the usage record.
    ``available`` is the account's available balance right after the hold (None for a
    free model, which holds nothing).
    """

    id: str
    request_id: str
    account_id: int
    key_id: str
    model: str
    pricing: Pricing | None
    held: int
    available: int | None

    def cost(self, usage: Usage) -> int:
        """What ``usage`` costs, never more than was held."""
        if self.pricing is None or self.pricing.free:
            return 0
        return min(self.pricing.cost(usage.prompt_tokens, usage.completion_tokens), self.held)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended, as billing needs it (counts and ids only)."""

    status: OutcomeStatus
    usage: Usage | None
    stream: bool
    latency_ms: float
    node_id: str | None = None
    operator: Operator | None = None
    finish_reason: str | None = None
    error_code: str | None = None
    endpoint: str = "chat.completions"

    @property
    def served(self) -> bool:
        """Whether the request is paid for (and counts against rate limits): not if it
        failed, nor if it was cut short before any token was counted (the client left
        while it was being dispatched)."""
        return self.status != "failed" and self.usage is not None


class BillingService:
    """Checks tiers, holds the largest possible cost, and settles the real one.

    Holds and settlements are served from this gateway's credit slices, in memory, and
    written to the ledger in batches (:mod:`infermesh.billing.slices`): :meth:`run` is
    the background task that writes them, :meth:`close` writes what is left.
    """

    def __init__(
        self,
        ledger: CreditLedger,
        usage: UsageLog,
        *,
        tiers: TierPolicy,
        operator_share: float = 0.8,
        hold_ttl: timedelta = timedelta(minutes=2),
        flush_interval: float = 0.05,
        slice_idle: float = 5.0,
        unit: CreditUnit | None = None,
    ) -> None:
        self.ledger = ledger
        self.usage = usage
        self.tiers = tiers
        self.unit = unit or CreditUnit()
        self._share_bps = round(operator_share * BASIS_POINTS)
        self.slices = CreditSlices(
            ledger, ttl=hold_ttl, flush_interval=flush_interval, idle=slice_idle
        )

    def max_cost(self, spec: ModelSpec, request: ChatCompletionRequest) -> int:
        """The most a chat ``request`` can cost on ``spec``: what is held before it runs."""
        return self.bound_cost(spec, token_bound(request, context_length=spec.context_length))

    @staticmethod
    def bound_cost(spec: ModelSpec, bound: TokenBound) -> int:
        """What ``bound`` tokens cost on ``spec``."""
        if spec.pricing is None or spec.pricing.free:
            return 0
        return spec.pricing.cost(bound.prompt_tokens, bound.completion_tokens)

    async def authorize(
        self,
        principal: Principal,
        spec: ModelSpec,
        bound: TokenBound,
        *,
        charge_id: str,
        request_id: str,
    ) -> Charge:
        """Check the tier and hold the cost of ``bound`` (the most tokens the request can
        use); raise 402 if either fails."""
        self.tiers.check(principal.tier, spec.id, spec.tier)
        amount = self.bound_cost(spec, bound)
        available = None
        if amount:
            available = await self.slices.hold(principal.account_id, charge_id, amount)
        return Charge(
            id=charge_id,
            request_id=request_id,
            account_id=principal.account_id,
            key_id=principal.key_id,
            model=spec.id,
            pricing=spec.pricing,
            held=amount,
            available=available,
        )

    async def settle(self, charge: Charge, outcome: Outcome) -> Settled:
        """Charge what ``outcome`` used (nothing if it failed), release the rest, pay the
        operator their share; record the usage. Safe to call twice.

        A request held here settles in memory (written with the next batch); one held
        in the ledger itself (by :meth:`CreditLedger.hold`) settles there at once."""
        usage = outcome.usage or Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        cost = charge.cost(usage) if outcome.served else 0
        earning = None
        if outcome.operator is not None and self._share_bps:
            earning = Earning(outcome.operator.account_id, self._share_bps)
        settlement = Settlement(
            hold_id=charge.id,
            account_id=charge.account_id,
            cost=cost,
            earning=earning,
            usage=_usage_row(charge, outcome, usage),
        )
        slices = self.slices
        if slices.settled(charge.id):
            return Settled(0, await slices.balance(charge.account_id), repeated=True)
        if slices.holds(charge.id) or not charge.held:
            return slices.settle(settlement)
        return await self.ledger.settle(settlement)

    @property
    def open_holds(self) -> int:
        """Holds of this gateway's running requests."""
        return self.slices.unsettled()

    async def balance(self, account_id: int) -> BalanceRecord:
        """The account's balance, with this gateway's settlements written first."""
        return await self.slices.balance(account_id)

    async def flush(self) -> None:
        """Write the settlements made so far (reads of the ledger then see them)."""
        await self.slices.flush()

    async def run(self) -> None:
        """Write settlements in batches and keep slices alive, forever (a background
        task)."""
        await self.slices.run()

    async def close(self) -> None:
        """Write every settlement and give back the credit slices (on shutdown)."""
        await self.slices.close()

    async def expire_holds(self) -> int:
        """Release holds left behind by a gateway that died mid-request."""
        return await self.ledger.expire_holds()


def billed_usage(usage: Usage, cost: int) -> CompletionUsage:
    """``usage`` as a client sees it, with its cost."""
    return CompletionUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cost=usd(cost),
        cost_micro_usd=cost,
    )


def _usage_row(charge: Charge, outcome: Outcome, usage: Usage) -> UsageRow:
    operator = outcome.operator
    return UsageRow(
        id=charge.id,
        account_id=charge.account_id,
        request_id=charge.request_id[:200],
        key_id=charge.key_id,
        model=charge.model,
        node_id=outcome.node_id,
        worker_id=operator.worker_id if operator else None,
        operator_account_id=operator.account_id if operator else None,
        stream=outcome.stream,
        status=outcome.status,
        error_code=outcome.error_code,
        finish_reason=outcome.finish_reason,
        endpoint=outcome.endpoint,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost=0,
        operator_earning=0,
        latency_ms=round(outcome.latency_ms),
        created_at=utcnow(),
    )
