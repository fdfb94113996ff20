"""The one interface of a limit store, and the rate arithmetic both stores share.

A rate (so many units per window) is a bucket kept by GCRA: the store keeps one number
per bucket, its *theoretical arrival time* (TAT). A bucket is full when TAT is in the
past; each unit drawn moves TAT by ``window / limit``; a draw fits if TAT stays within
one window of now. So capacity comes back continuously, and the wait for a refused
draw is exact. Concurrency is a pool of slots that expire unless renewed, so a gateway
that dies holding slots gives them back.

Every check-and-draw of one request is all-or-nothing: a request refused by one limit
uses none of the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from infermesh.errors import InfermeshError

EPSILON = 1e-6


class LimiterUnavailable(InfermeshError):
    """The limit store (Redis) cannot be reached, and the gateway fails closed."""

    status_code = 503
    error_type = "service_unavailable"
    code = "rate_limiter_unavailable"
    detail = ""

    @classmethod
    def because(cls, detail: str) -> LimiterUnavailable:
        """The error clients see (which names no infrastructure), with ``detail`` for logs."""
        error = cls(
            "Rate limiting is unavailable for a moment, so requests are refused. "
            "Try again shortly.",
            retry_after=1.0,
        )
        error.detail = detail
        return error


@dataclass(frozen=True, slots=True)
class Bucket:
    """A rate: ``limit`` units per ``window`` seconds, kept under ``key``."""

    key: str
    limit: int
    window: float

    @property
    def interval(self) -> float:
        return self.window / self.limit


@dataclass(frozen=True, slots=True)
class Draw:
    """``cost`` units to take from ``bucket`` (negative gives units back)."""

    bucket: Bucket
    cost: int


@dataclass(frozen=True, slots=True)
class Pool:
    """At most ``limit`` requests at once, their slots kept under ``key``."""

    key: str
    limit: int


@dataclass(frozen=True, slots=True)
class Level:
    """A bucket's state: units left now, and seconds until it is full again."""

    bucket: Bucket
    remaining: int
    reset: float


@dataclass(frozen=True, slots=True)
class Occupancy:
    """A pool's state: slots in use."""

    pool: Pool
    in_use: int

    @property
    def remaining(self) -> int:
        return max(self.pool.limit - self.in_use, 0)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to an admission: whether it was admitted, the state of every bucket
    and pool after it, and if refused, the limit that refused it and the seconds to wait."""

    admitted: bool
    levels: list[Level]
    occupancy: list[Occupancy]
    refused_by: Bucket | Pool | None = None
    retry_after: float = 0.0


class LimitStore(Protocol):
    """Where limit state lives: in this process, or in Redis for several gateways."""

    async def admit(self, draws: list[Draw], pools: list[Pool], *, slot: str) -> Verdict:
        """Draw every ``draws`` and take a slot named ``slot`` in every pool, or none."""
        ...

    async def adjust(self, draws: list[Draw]) -> None:
        """Draw (or give back) units after the fact, whether they fit or not."""
        ...

    async def release(self, pools: list[Pool], *, slot: str) -> None:
        """Give the slot back to every pool."""
        ...

    async def finish(self, draws: list[Draw], pools: list[Pool], *, slot: str) -> None:
        """``adjust(draws)`` and ``release(pools, slot=slot)`` at once (one round trip)."""
        ...

    async def renew(self, slots: dict[str, list[Pool]]) -> None:
        """Keep these slots (name → pools) alive for another slot lifetime."""
        ...

    async def inspect(self, buckets: list[Bucket], pools: list[Pool]) -> Verdict:
        """The state of buckets and pools, changing nothing."""
        ...

    async def ping(self) -> None:
        """Raise :class:`LimiterUnavailable` unless the store answers."""
        ...

    async def close(self) -> None: ...


def level_of(bucket: Bucket, tat: float, now: float) -> Level:
    """The state of ``bucket`` whose TAT is ``tat``, at ``now``."""
    ahead = max(tat - now, 0.0)
    remaining = math.floor((bucket.window - ahead) / bucket.interval + EPSILON)
    return Level(bucket, min(max(remaining, 0), bucket.limit), ahead)


def drawn_tat(bucket: Bucket, tat: float | None, now: float, cost: int) -> float:
    """The TAT after drawing ``cost`` (never before now)."""
    start = now if tat is None else max(tat, now)
    return max(start + cost * bucket.interval, now)


def fits(bucket: Bucket, new_tat: float, now: float) -> bool:
    return new_tat - now <= bucket.window + EPSILON


def wait_for(bucket: Bucket, new_tat: float, now: float) -> float:
    """Seconds until a draw that would move TAT to ``new_tat`` fits."""
    return max(new_tat - bucket.window - now, 0.0)
