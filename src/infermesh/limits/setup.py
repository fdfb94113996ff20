"""Building the rate limiter a gateway's settings describe."""

from __future__ import annotations

import logging

from infermesh.config import Settings
from infermesh.errors import ConfigError
from infermesh.limits.book import LimitBook
from infermesh.limits.memory import MemoryLimitStore
from infermesh.limits.policy import TierLimits
from infermesh.limits.redis_store import RedisLimitStore
from infermesh.limits.service import RateLimiter
from infermesh.limits.store import LimiterUnavailable, LimitStore
from infermesh.store.database import Database

logger = logging.getLogger(__name__)


def limit_store(settings: Settings) -> LimitStore:
    """Redis if ``redis_url`` is set, else the in-process store."""
    if settings.redis_url:
        return RedisLimitStore(
            settings.redis_url, slot_ttl=settings.limit_slot_ttl, timeout=settings.redis_timeout
        )
    return MemoryLimitStore(slot_ttl=settings.limit_slot_ttl)


async def check_store(settings: Settings, store: LimitStore) -> None:
    """Raise :class:`ConfigError` if the configured Redis does not answer."""
    try:
        await store.ping()
    except LimiterUnavailable as exc:
        raise ConfigError(
            "Cannot reach the Redis that keeps the rate limits (INFERMESH_REDIS_URL or "
            f"--redis-url): {exc.detail}"
        ) from None


async def build_limiter(
    settings: Settings, database: Database, tier_names: list[str]
) -> RateLimiter:
    """The rate limiter ``settings`` describe, its store checked."""
    tiers = TierLimits(settings.tier_limits)
    for tier in tier_names:
        if tier not in tiers.tiers():
            logger.warning("tier '%s' has no rate limits configured: it is unlimited", tier)
    store = limit_store(settings)
    try:
        await check_store(settings, store)
    except ConfigError:
        await store.close()
        raise
    book = LimitBook(database, tiers, cache_ttl=settings.limits_cache_ttl)
    return RateLimiter(
        store,
        book,
        prefix=settings.redis_prefix,
        fail_open=settings.rate_limit_fail_open,
        slot_ttl=settings.limit_slot_ttl,
    )
