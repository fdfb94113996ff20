"""The limits set by admins (per tier, account or key), and those a caller is held to."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from sqlalchemy import and_, or_, select

from infermesh.accounts.records import Principal
from infermesh.limits.policy import EffectiveLimits, LimitSettings, TierLimits, resolve
from infermesh.store import Database, RateLimitSetting, utcnow

Scope = Literal["tier", "account", "key"]
_CACHE_SIZE = 10_000


class LimitBook:
    """Reads and writes the ``rate_limits`` table, and resolves a caller's limits.

    What a gateway resolves is cached for ``cache_ttl`` seconds, so a change made by
    another gateway or the CLI applies within that time (at once on this gateway).
    """

    def __init__(
        self,
        database: Database,
        tiers: TierLimits,
        *,
        cache_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = database
        self.tiers = tiers
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._cache: OrderedDict[tuple[str, int, str], tuple[float, EffectiveLimits]] = (
            OrderedDict()
        )

    async def get(self, scope: Scope, subject: str) -> LimitSettings:
        """What is set for ``subject`` itself (nothing inherited)."""
        async with self._db.session(read_only=True) as session:
            row = await session.get(RateLimitSetting, (scope, subject))
        return LimitSettings.model_validate(row.limits) if row is not None else LimitSettings()

    async def update(self, scope: Scope, subject: str, changes: LimitSettings) -> LimitSettings:
        """Apply ``changes`` (the fields it names; None clears one) and return the result."""
        async with self._db.session() as session, session.begin():
            row = await session.get(RateLimitSetting, (scope, subject), with_for_update=True)
            current = (
                LimitSettings.model_validate(row.limits) if row is not None else LimitSettings()
            )
            result = current.updated(changes)
            if row is None:
                session.add(
                    RateLimitSetting(
                        scope=scope, subject=subject, limits=result.stored(), updated_at=utcnow()
                    )
                )
            else:
                row.limits = result.stored()
                row.updated_at = utcnow()
        self._cache.clear()
        return result

    def tier_settings(self, tier: str, stored: LimitSettings) -> LimitSettings:
        """A tier's limits: what is configured, with what an admin set on top."""
        return self.tiers.get(tier).updated(_all_fields(stored))

    async def effective(self, principal: Principal) -> EffectiveLimits:
        """The limits ``principal`` is held to right now (cached briefly)."""
        cache_key = (principal.tier, principal.account_id, principal.key_id)
        now = self._clock()
        cached = self._cache.get(cache_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        limits = await self.load(principal.tier, principal.account_id, principal.key_id)
        self._cache[cache_key] = (now + self._cache_ttl, limits)
        self._cache.move_to_end(cache_key)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return limits

    async def load(self, tier_name: str, account_id: int, key_id: str | None) -> EffectiveLimits:
        """The limits of an account of ``tier_name`` (and of its key ``key_id``), uncached."""
        wanted = {("tier", tier_name), ("account", str(account_id))}
        if key_id is not None:
            wanted.add(("key", key_id))
        query = select(RateLimitSetting).where(
            or_(
                *(
                    and_(RateLimitSetting.scope == scope, RateLimitSetting.subject == subject)
                    for scope, subject in wanted
                )
            )
        )
        async with self._db.session(read_only=True) as session:
            rows = (await session.scalars(query)).all()
        found = {row.scope: LimitSettings.model_validate(row.limits) for row in rows}
        tier = self.tier_settings(tier_name, found.get("tier", LimitSettings()))
        return resolve(
            tier, found.get("account", LimitSettings()), found.get("key", LimitSettings())
        )


def _all_fields(settings: LimitSettings) -> LimitSettings:
    """``settings`` as changes that set exactly its set fields (and touch no others)."""
    return LimitSettings.model_validate(settings.stored())
