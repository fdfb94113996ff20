"""Charging a request: tier check and hold before dispatch, settlement after."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from infermesh.accounts.records import Principal
from infermesh.billing.ledger import BASIS_POINTS, CreditLedger, Earning, Settled, Settlement
from infermesh.billing.money import CreditUnit, usd
from infermesh.billing.pricing import Pricing, token_bound
from infermesh.billing.tiers import TierPolicy
from infermesh.billing.usage import UsageLog
from infermesh.catalog.spec import ModelSpec
from infermesh.mesh.worker import Operator
from infermesh.protocol.chat import ChatCompletionRequest, CompletionUsage, Usage
from infermesh.store import UsageEntry, utcnow

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

    @property
    def served(self) -> bool:
        """Whether the request is paid for (and counts against rate limits): not if it
        failed, nor if it was cut short before any token was counted (the client left
        while it was being dispatched)."""
        return self.status != "failed" and self.usage is not None


class BillingService:
    """Checks tiers, holds the largest possible cost, and settles the real one."""

    def __init__(
        self,
        ledger: CreditLedger,
        usage: UsageLog,
        *,
        tiers: TierPolicy,
        operator_share: float = 0.8,
        hold_ttl: timedelta = timedelta(minutes=30),
        unit: CreditUnit | None = None,
    ) -> None:
        self.ledger = ledger
        self.usage = usage
        self.tiers = tiers
        self.unit = unit or CreditUnit()
        self._share_bps = round(operator_share * BASIS_POINTS)
        self._hold_ttl = hold_ttl
        self._live_holds: dict[str, float] = {}

    def max_cost(self, spec: ModelSpec, request: ChatCompletionRequest) -> int:
        """The most ``request`` can cost on ``spec``: what is held before it runs."""
        if spec.pricing is None or spec.pricing.free:
            return 0
        bound = token_bound(request, context_length=spec.context_length)
        return spec.pricing.cost(bound.prompt_tokens, bound.completion_tokens)

    async def authorize(
        self,
        principal: Principal,
        spec: ModelSpec,
        request: ChatCompletionRequest,
        *,
        charge_id: str,
        request_id: str,
    ) -> Charge:
        """Check the tier and hold the largest possible cost; raise 402 if either fails."""
        self.tiers.check(principal.tier, spec.id, spec.tier)
        amount = self.max_cost(spec, request)
        available = None
        if amount:
            available = await self.ledger.hold(
                principal.account_id, charge_id, amount, ttl=self._hold_ttl
            )
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
        operator their share; record the usage. Safe to call twice."""
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
            usage=_usage_entry(charge, outcome, usage),
        )
        return await self.ledger.settle(settlement)

    def keep_alive(self, charge: Charge, *, until: float) -> None:
        """Renew ``charge``'s hold while its request runs, at the latest until the
        event-loop time ``until`` (the request's own deadline)."""
        if charge.held:
            self._live_holds[charge.id] = until

    def let_go(self, charge: Charge) -> None:
        """Stop renewing ``charge``'s hold (its request has settled)."""
        self._live_holds.pop(charge.id, None)

    @property
    def live_holds(self) -> int:
        """Holds of this gateway's running requests."""
        return len(self._live_holds)

    async def keep_holds_alive(self) -> None:
        """Renew the holds of running requests before they expire, forever (a
        background task), so that a long request is never left unheld."""
        interval = max(self._hold_ttl.total_seconds() / 3, 0.1)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for hold_id in [hold for hold, until in self._live_holds.items() if until < now]:
                del self._live_holds[hold_id]
            if not self._live_holds:
                continue
            try:
                await self.ledger.renew_holds(list(self._live_holds), ttl=self._hold_ttl)
            except Exception:
                logger.exception("renewing credit holds failed; will try again")

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


def _usage_entry(charge: Charge, outcome: Outcome, usage: Usage) -> UsageEntry:
    operator = outcome.operator
    return UsageEntry(
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
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost=0,
        operator_earning=0,
        latency_ms=round(outcome.latency_ms),
        created_at=utcnow(),
    )
