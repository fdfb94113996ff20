"""Admitting a request under its limits, and giving back what it did not use.

Before a request runs, it draws one request from each requests-per-minute bucket, its
token budget (an estimate of the prompt plus ``max_tokens``) from each token bucket,
and a slot from each concurrency pool, all at once or not at all. When it ends, the
tokens it really used replace the budget (more or less is drawn or given back) and the
slot is released, whatever the ending: success, error, client gone or cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass, field

import anyio

from infermesh.accounts.records import Principal
from infermesh.errors import InvalidRequest, RateLimited
from infermesh.limits.book import LimitBook
from infermesh.limits.headers import rate_limit_headers, readable_duration
from infermesh.limits.policy import RATE_WINDOWS, EffectiveLimits, Limit, LimitName
from infermesh.limits.store import (
    Bucket,
    Draw,
    Level,
    LimiterUnavailable,
    LimitStore,
    Occupancy,
    Pool,
    Verdict,
)
from infermesh.protocol.chat import ChatCompletionRequest, ImagePart, TextPart

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 85
_SHORT_NAMES: dict[LimitName, str] = {
    "requests_per_minute": "rpm",
    "tokens_per_minute": "tpm",
    "tokens_per_day": "tpd",
    "concurrent_requests": "concurrent",
}
_READABLE: dict[LimitName, str] = {
    "requests_per_minute": "requests per minute",
    "tokens_per_minute": "tokens per minute",
    "tokens_per_day": "tokens per day",
    "concurrent_requests": "concurrent requests",
}
_WARN_EVERY = 30.0


def requested_tokens(request: ChatCompletionRequest) -> int:
    """The token budget a request asks for, before it runs: an estimate of its prompt
    (four characters a token, a fixed count per image) plus ``max_tokens`` if given."""
    characters = 0
    images = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            characters += len(content)
        elif content is not None:
            characters += sum(len(part.text) for part in content if isinstance(part, TextPart))
            images += sum(1 for part in content if isinstance(part, ImagePart))
        for call in message.tool_calls or ():
            characters += len(call.function.name) + len(call.function.arguments)
    for tool in request.tools or ():
        characters += len(tool.model_dump_json())
    prompt = math.ceil(characters / CHARS_PER_TOKEN) + images * IMAGE_TOKENS
    return max(prompt, 1) + (request.requested_max_tokens() or 0)


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit in force and how much of it is used (for ``GET /v1/limits``)."""

    scope: str
    limit: Limit
    level: Level | None = None
    occupancy: Occupancy | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a request draws: each draw and pool with the limit it comes from."""

    draws: list[tuple[str, Limit, Draw]]
    pools: list[tuple[str, Limit, Pool]]

    @property
    def token_draws(self) -> list[Draw]:
        return [draw for _, limit, draw in self.draws if limit.name != "requests_per_minute"]


@dataclass
class Admission:
    """A request let in: the slot it holds and the token budget it drew."""

    limiter: RateLimiter | None
    slot: str = ""
    pools: list[Pool] = field(default_factory=list)
    token_draws: list[Draw] = field(default_factory=list)
    reserved: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    _finished: bool = False

    async def finish(self, tokens_used: int) -> None:
        """Count the tokens really used instead of the budget, and give the slot back.
        Runs once, shielded from cancellation."""
        if self._finished or self.limiter is None:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            await self.limiter.finish(self, tokens_used)


class RateLimiter:
    """Admits requests under their limits; keeps the slots of running ones alive."""

    def __init__(
        self,
        store: LimitStore,
        book: LimitBook,
        *,
        prefix: str = "infermesh",
        fail_open: bool = False,
        slot_ttl: float = 30.0,
    ) -> None:
        self.store = store
        self.book = book
        self._prefix = prefix
        self._fail_open = fail_open
        self._slot_ttl = slot_ttl
        self._live: dict[str, list[Pool]] = {}
        self._warned_at = -math.inf

    @property
    def slots_held(self) -> int:
        """Requests of this gateway holding a concurrency slot now."""
        return len(self._live)

    async def admit(self, principal: Principal, budget: int) -> Admission:
        """Let in a request that asks for ``budget`` tokens (an estimate: see
        :func:`requested_tokens`), or raise :class:`RateLimited` (429, with ``headers``),
        :class:`InvalidRequest` for a budget larger than a limit, or
        :class:`LimiterUnavailable` when the store is down and the gateway fails closed."""
        limits = await self.book.effective(principal)
        plan = self._plan(principal, limits, budget)
        if not plan.draws and not plan.pools:
            return Admission(None)
        _check_budget(plan, budget)
        slot = secrets.token_hex(12)
        try:
            verdict = await self.store.admit(
                [draw for _, _, draw in plan.draws], [pool for _, _, pool in plan.pools], slot=slot
            )
        except LimiterUnavailable as exc:
            return self._unavailable(exc)
        headers = rate_limit_headers(
            [
                (limit.name, level)
                for (_, limit, _), level in zip(plan.draws, verdict.levels, strict=True)
            ],
            [
                (limit.name, used)
                for (_, limit, _), used in zip(plan.pools, verdict.occupancy, strict=True)
            ],
        )
        if not verdict.admitted:
            raise _refusal(principal, plan, verdict, budget, headers)
        pools = [pool for _, _, pool in plan.pools]
        if pools:
            self._live[slot] = pools
        return Admission(self, slot, pools, plan.token_draws, budget, headers)

    async def finish(self, admission: Admission, tokens_used: int) -> None:
        self._live.pop(admission.slot, None)
        change = tokens_used - admission.reserved
        try:
            draws = [Draw(draw.bucket, change) for draw in admission.token_draws if change]
            await self.store.finish(draws, admission.pools, slot=admission.slot)
        except LimiterUnavailable as exc:
            logger.warning(
                "could not count tokens or release a slot (%s); the slot expires in %.0fs",
                exc.detail,
                self._slot_ttl,
            )
        except Exception:
            logger.exception("finishing an admission failed; its slot expires by itself")

    async def status(self, principal: Principal) -> list[LimitState]:
        """Every limit ``principal`` is held to, with its current use."""
        limits = await self.book.effective(principal)
        plan = self._plan(principal, limits, 0)
        verdict = await self.store.inspect(
            [draw.bucket for _, _, draw in plan.draws], [pool for _, _, pool in plan.pools]
        )
        states = [
            LimitState(scope, limit, level=level)
            for (scope, limit, _), level in zip(plan.draws, verdict.levels, strict=True)
        ]
        states += [
            LimitState(scope, limit, occupancy=occupancy)
            for (scope, limit, _), occupancy in zip(plan.pools, verdict.occupancy, strict=True)
        ]
        drawn = {(state.scope, state.limit.name) for state in states}
        for scope, scope_limits in (("account", limits.account), ("key", limits.key)):
            for limit in scope_limits.values():
                if (scope, limit.name) not in drawn:
                    states.append(LimitState(scope, limit))
        return states

    async def keep_slots_alive(self) -> None:
        """Renew the slots of running requests, forever (a background task)."""
        interval = max(self._slot_ttl / 3, 0.1)
        while True:
            await asyncio.sleep(interval)
            if not self._live:
                continue
            try:
                await self.store.renew(dict(self._live))
            except LimiterUnavailable as exc:
                logger.warning("could not renew concurrency slots: %s", exc.detail)

    def _plan(self, principal: Principal, limits: EffectiveLimits, budget: int) -> _Plan:
        draws: list[tuple[str, Limit, Draw]] = []
        pools: list[tuple[str, Limit, Pool]] = []
        for scope, scope_limits in (("account", limits.account), ("key", limits.key)):
            for limit in scope_limits.values():
                if limit.value is None:
                    continue
                key = self._key(principal, scope, limit.name)
                window = RATE_WINDOWS.get(limit.name)
                if window is None:
                    pools.append((scope, limit, Pool(key, limit.value)))
                    continue
                cost = 1 if limit.name == "requests_per_minute" else budget
                draws.append((scope, limit, Draw(Bucket(key, limit.value, window), cost)))
        return _Plan(draws, pools)

    def _key(self, principal: Principal, scope: str, name: LimitName) -> str:
        # One hash tag per account, so one request's keys sit in one Redis Cluster slot.
        owner = f"{self._prefix}:{{a{principal.account_id}}}"
        short = _SHORT_NAMES[name]
        return f"{owner}:{short}" if scope == "account" else f"{owner}:k:{principal.key_id}:{short}"

    def _unavailable(self, exc: LimiterUnavailable) -> Admission:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            action = (
                "letting requests through unlimited" if self._fail_open else "refusing requests"
            )
            logger.warning("rate limiter unavailable (%s): %s", exc.detail, action)
        if not self._fail_open:
            raise exc
        return Admission(None)


def _check_budget(plan: _Plan, budget: int) -> None:
    """A budget larger than a token limit could never be let in: say so (400), rather
    than answer 429s that no wait would cure."""
    for scope, limit, draw in plan.draws:
        if limit.name != "requests_per_minute" and budget > draw.bucket.limit:
            raise InvalidRequest(
                f"This request asks for up to {budget} tokens (an estimate of the prompt "
                f"plus max_tokens), more than the {scope}'s whole limit of "
                f"{draw.bucket.limit} {_READABLE[limit.name]}. Lower max_tokens or shorten "
                "the prompt.",
                param="max_tokens",
                code="request_exceeds_rate_limit",
            )


def _refusal(
    principal: Principal, plan: _Plan, verdict: Verdict, budget: int, headers: dict[str, str]
) -> RateLimited:
    refused_by = verdict.refused_by
    scope, limit = next(
        (scope, limit)
        for scope, limit, item in [*plan.draws, *plan.pools]
        if (item.bucket if isinstance(item, Draw) else item) == refused_by
    )
    whom = f"account '{principal.account_name}'" if scope == "account" else "this API key"
    wait = readable_duration(verdict.retry_after)
    if limit.name == "concurrent_requests":
        message = (
            f"Too many requests at once for {whom}: the limit is {limit.value} in flight. "
            "Try again when one of them finishes."
        )
    elif limit.name == "requests_per_minute":
        message = (
            f"Rate limit reached for requests per minute for {whom}: limit {limit.value}. "
            f"Please try again in {wait}."
        )
    else:
        level = next(lv for lv in verdict.levels if lv.bucket == refused_by)
        message = (
            f"Rate limit reached for {_READABLE[limit.name]} for {whom}: limit {limit.value}, "
            f"remaining {level.remaining}, requested {budget} (an estimate of the prompt plus "
            f"max_tokens). Please try again in {wait}, or ask for fewer tokens."
        )
    retry_after = max(verdict.retry_after, 0.001)
    error = RateLimited(message, param=limit.name, retry_after=retry_after)
    error.error_type = "tokens" if limit.name.startswith("tokens") else "requests"
    error.headers = {**headers, "retry-after-ms": str(math.ceil(retry_after * 1000))}
    return error
