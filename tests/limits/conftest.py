"""Fixtures for the limits package: a store of each kind, and a clock moved by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import redis

from infermesh.limits.memory import MemoryLimitStore
from infermesh.limits.redis_store import RedisLimitStore
from infermesh.limits.store import LimitStore
from tests.support.redis import keys_with_prefix, redis_url, require_redis, unique_prefix


class HandClock:
    """A monotonic clock (float seconds) that only the test moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class StoreFactory:
    """Makes limit stores of one kind; every Redis key the test uses sits under ``prefix``."""

    kind: str
    prefix: str
    made: list[LimitStore] = field(default_factory=list)

    def new(self, *, slot_ttl: float = 30.0) -> LimitStore:
        """Another store. Redis stores made by one factory share the same Redis (as the
        gateways of one deployment do); memory stores share nothing."""
        store: LimitStore
        if self.kind == "redis":
            store = RedisLimitStore(redis_url(), slot_ttl=slot_ttl, timeout=2.0)
        else:
            store = MemoryLimitStore(slot_ttl=slot_ttl)
        self.made.append(store)
        return store

    def key(self, name: str) -> str:
        """A store key of this test's own (one hash tag, as one account's keys have)."""
        return f"{self.prefix}:{{a1}}:{name}"


@pytest.fixture
def hand_clock() -> HandClock:
    return HandClock()


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "redis":
        require_redis()
    return kind


async def _factory(kind: str) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(kind, unique_prefix())
    try:
        yield factory
    finally:
        for store in factory.made:
            await store.close()
        if kind == "redis":
            _delete_keys(factory.prefix)


@pytest.fixture
async def stores(store_kind: str) -> AsyncIterator[StoreFactory]:
    """A factory of stores of the kind under test."""
    async for factory in _factory(store_kind):
        yield factory


@pytest.fixture
async def redis_stores() -> AsyncIterator[StoreFactory]:
    """A factory of Redis stores (for the tests that only concern Redis)."""
    require_redis()
    async for factory in _factory("redis"):
        yield factory


def _delete_keys(prefix: str) -> None:
    keys = list(keys_with_prefix(prefix))
    if not keys:
        return
    client = redis.Redis.from_url(redis_url())
    try:
        client.delete(*keys)
    finally:
        client.close()


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float, what: str) -> float:
    """Poll the async ``check`` until it holds (failing after ``within`` seconds); the
    seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not true within {within}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started
