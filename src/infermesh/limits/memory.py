"""The in-process limit store: the default, for a single gateway."""

from __future__ import annotations

import time
from collections.abc import Callable

from infermesh.limits.store import (
    Bucket,
    Draw,
    Level,
    Occupancy,
    Pool,
    Verdict,
    drawn_tat,
    fits,
    level_of,
    wait_for,
)

SLOT_WAIT = 1.0
"""Retry-After for a full pool: when a slot frees cannot be known."""
_SWEEP_EVERY = 1024


class MemoryLimitStore:
    """Buckets and pools in a dict. Each call runs without awaiting, so on one event
    loop every admission is atomic."""

    def __init__(self, *, slot_ttl: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._slot_ttl = slot_ttl
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._pools: dict[str, dict[str, float]] = {}
        self._operations = 0

    async def admit(self, draws: list[Draw], pools: list[Pool], *, slot: str) -> Verdict:
        now = self._tick()
        planned = [
            (draw, drawn_tat(draw.bucket, self._tats.get(draw.bucket.key), now, draw.cost))
            for draw in draws
        ]
        refused_by: Bucket | Pool | None = None
        retry_after = 0.0
        for draw, new_tat in planned:
            if not fits(draw.bucket, new_tat, now):
                wait = wait_for(draw.bucket, new_tat, now)
                if refused_by is None or wait > retry_after:
                    refused_by, retry_after = draw.bucket, wait
        for pool in pools:
            full = len(self._live(pool.key, now)) >= pool.limit
            if full and (refused_by is None or retry_after < SLOT_WAIT):
                refused_by, retry_after = pool, SLOT_WAIT
        if refused_by is not None:
            levels = [self._level(draw.bucket, now) for draw in draws]
            return Verdict(False, levels, self._occupancy(pools, now), refused_by, retry_after)
        for draw, new_tat in planned:
            self._tats[draw.bucket.key] = new_tat
        for pool in pools:
            self._pools.setdefault(pool.key, {})[slot] = now + self._slot_ttl
        levels = [level_of(draw.bucket, tat, now) for draw, tat in planned]
        return Verdict(True, levels, self._occupancy(pools, now))

    async def adjust(self, draws: list[Draw]) -> None:
        now = self._tick()
        for draw in draws:
            key = draw.bucket.key
            self._tats[key] = drawn_tat(draw.bucket, self._tats.get(key), now, draw.cost)

    async def release(self, pools: list[Pool], *, slot: str) -> None:
        for pool in pools:
            self._pools.get(pool.key, {}).pop(slot, None)

    async def finish(self, draws: list[Draw], pools: list[Pool], *, slot: str) -> None:
        await self.adjust(draws)
        await self.release(pools, slot=slot)

    async def renew(self, slots: dict[str, list[Pool]]) -> None:
        now = self._clock()
        for slot, pools in slots.items():
            for pool in pools:
                held = self._pools.get(pool.key)
                if held is not None and slot in held:
                    held[slot] = now + self._slot_ttl

    async def inspect(self, buckets: list[Bucket], pools: list[Pool]) -> Verdict:
        now = self._clock()
        levels = [self._level(bucket, now) for bucket in buckets]
        return Verdict(True, levels, self._occupancy(pools, now))

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _level(self, bucket: Bucket, now: float) -> Level:
        return level_of(bucket, self._tats.get(bucket.key, now), now)

    def _occupancy(self, pools: list[Pool], now: float) -> list[Occupancy]:
        return [Occupancy(pool, len(self._live(pool.key, now))) for pool in pools]

    def _live(self, key: str, now: float) -> dict[str, float]:
        held = self._pools.get(key, {})
        for slot in [slot for slot, expires in held.items() if expires <= now]:
            del held[slot]
        return held

    def _tick(self) -> float:
        """The time now; every so often, forget buckets that are full and empty pools."""
        now = self._clock()
        self._operations += 1
        if self._operations % _SWEEP_EVERY == 0:
            self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
            self._pools = {key: held for key, held in self._pools.items() if self._live(key, now)}
        return now
