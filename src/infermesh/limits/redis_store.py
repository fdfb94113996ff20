"""The Redis limit store: several gateways sharing one Redis enforce one limit together.

Each operation is one Lua script, so it is atomic on the Redis server, and it reads the
server's clock (``TIME``), so gateways whose clocks differ still agree. The keys of one
account share a hash tag (``{a<id>}``), as Redis Cluster would need of one script's keys;
this store itself talks to a single Redis (or a proxy in front of a cluster).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from infermesh.limits.memory import SLOT_WAIT
from infermesh.limits.store import (
    EPSILON,
    Bucket,
    Draw,
    Level,
    LimiterUnavailable,
    Occupancy,
    Pool,
    Verdict,
    level_of,
)

# Shared by the scripts: the server's time in seconds, and a float written exactly.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function exact(x) return string.format('%.17g', x) end
local function tat_of(key)
  local raw = redis.call('GET', key)
  if raw then return math.max(tonumber(raw), now) end
  return now
end
local function keep(key, tat)
  redis.call('SET', key, exact(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
"""

# KEYS: n buckets, then pools. ARGV: n, slot, slot ttl, epsilon, slot wait,
# (limit, window, cost) per bucket, limit per pool.
# Returns {admitted, now, {tat per bucket}, {slots in use per pool}, refused index, wait}.
_ADMIT = (
    _PRELUDE
    + """
local n = tonumber(ARGV[1])
local slot, ttl, eps, slot_wait = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tats, planned, counts = {}, {}, {}
local refused, wait = 0, 0
for i = 1, n do
  local base = 5 + (i - 1) * 3
  local limit, window, cost = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
    tonumber(ARGV[base + 3])
  local tat = tat_of(KEYS[i])
  local new = math.max(tat + cost * window / limit, now)
  tats[i], planned[i] = tat, new
  if new - now > window + eps then
    local need = new - window - now
    if refused == 0 or need > wait then refused, wait = i, need end
  end
end
local pool_base = 5 + n * 3
for j = 1, #KEYS - n do
  local key = KEYS[n + j]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  counts[j] = redis.call('ZCARD', key)
  if counts[j] >= tonumber(ARGV[pool_base + j]) and (refused == 0 or wait < slot_wait) then
    refused, wait = n + j, slot_wait
  end
end
if refused == 0 then
  for i = 1, n do
    keep(KEYS[i], planned[i])
    tats[i] = planned[i]
  end
  for j = 1, #KEYS - n do
    local key = KEYS[n + j]
    redis.call('ZADD', key, now + ttl, slot)
    redis.call('PEXPIRE', key, math.ceil(ttl * 1000) + 1000)
    counts[j] = counts[j] + 1
  end
end
for i = 1, n do tats[i] = exact(tats[i]) end
return {refused == 0 and 1 or 0, exact(now), tats, counts, refused, exact(wait)}
"""
)

# Draws (or gives back) after the fact and releases a slot; adjust and release are its
# halves. KEYS: n buckets, then pools. ARGV: n, slot, (limit, window, cost) per bucket.
_FINISH = (
    _PRELUDE
    + """
local n = tonumber(ARGV[1])
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local limit, window, cost = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
    tonumber(ARGV[base + 3])
  keep(KEYS[i], math.max(tat_of(KEYS[i]) + cost * window / limit, now))
end
for j = n + 1, #KEYS do redis.call('ZREM', KEYS[j], ARGV[2]) end
return 1
"""
)

# KEYS: pools. ARGV: ttl, then the slot to renew in each pool.
_RENEW = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], math.ceil(ttl * 1000) + 1000)
end
return 1
"""
)

# KEYS: n buckets, then pools. ARGV: n. Returns {now, {tat per bucket}, {in use per pool}}.
_INSPECT = (
    _PRELUDE
    + """
local n = tonumber(ARGV[1])
local tats, counts = {}, {}
for i = 1, n do tats[i] = exact(tat_of(KEYS[i])) end
for j = 1, #KEYS - n do counts[j] = redis.call('ZCOUNT', KEYS[n + j], '(' .. exact(now), '+inf') end
return {exact(now), tats, counts}
"""
)


def redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


MAX_CONNECTIONS = 64
"""Connections one gateway opens to Redis for its limits, at most."""


class RedisLimitStore:
    """Limit state in Redis, shared by every gateway that uses the same URL and prefix."""

    def __init__(self, url: str, *, slot_ttl: float = 30.0, timeout: float = 2.0) -> None:
        self._url = url
        self._slot_ttl = slot_ttl
        # A blocking pool: with more requests at once than connections, a command waits
        # (up to ``timeout``) for one, instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._admit = self._redis.register_script(_ADMIT)
        self._renew = self._redis.register_script(_RENEW)
        self._finish = self._redis.register_script(_FINISH)
        self._inspect = self._redis.register_script(_INSPECT)

    async def admit(self, draws: list[Draw], pools: list[Pool], *, slot: str) -> Verdict:
        keys = [draw.bucket.key for draw in draws] + [pool.key for pool in pools]
        args: list[Any] = [len(draws), slot, self._slot_ttl, EPSILON, SLOT_WAIT]
        args += [*_bucket_args(draws), *(pool.limit for pool in pools)]
        admitted, now, tats, counts, refused, wait = await self._run(self._admit, keys, args)
        buckets = [draw.bucket for draw in draws]
        levels = _levels(buckets, tats, float(now))
        occupancy = [Occupancy(pool, int(count)) for pool, count in zip(pools, counts, strict=True)]
        if admitted:
            return Verdict(True, levels, occupancy)
        limits: list[Bucket | Pool] = [*buckets, *pools]
        return Verdict(False, levels, occupancy, limits[int(refused) - 1], float(wait))

    async def adjust(self, draws: list[Draw]) -> None:
        await self.finish(draws, [], slot="")

    async def release(self, pools: list[Pool], *, slot: str) -> None:
        await self.finish([], pools, slot=slot)

    async def finish(self, draws: list[Draw], pools: list[Pool], *, slot: str) -> None:
        if not draws and not pools:
            return
        keys = [draw.bucket.key for draw in draws] + [pool.key for pool in pools]
        await self._run(self._finish, keys, [len(draws), slot, *_bucket_args(draws)])

    async def renew(self, slots: dict[str, list[Pool]]) -> None:
        keys = [pool.key for pools in slots.values() for pool in pools]
        if not keys:
            return
        names = [slot for slot, pools in slots.items() for _ in pools]
        await self._run(self._renew, keys, [self._slot_ttl, *names])

    async def inspect(self, buckets: list[Bucket], pools: list[Pool]) -> Verdict:
        keys = [bucket.key for bucket in buckets] + [pool.key for pool in pools]
        now, tats, counts = await self._run(self._inspect, keys, [len(buckets)])
        levels = _levels(buckets, tats, float(now))
        occupancy = [Occupancy(pool, int(count)) for pool, count in zip(pools, counts, strict=True)]
        return Verdict(True, levels, occupancy)

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def close(self) -> None:
        await self._redis.aclose()

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> LimiterUnavailable:
        return LimiterUnavailable.because(
            f"Redis at {redacted(self._url)}: {type(exc).__name__}: {exc}"
        )


def _bucket_args(draws: list[Draw]) -> list[Any]:
    """(limit, window, cost) of each draw, as the scripts take them."""
    return [value for draw in draws for value in (draw.bucket.limit, draw.bucket.window, draw.cost)]


def _levels(buckets: list[Bucket], tats: list[str], now: float) -> list[Level]:
    return [level_of(bucket, float(tat), now) for bucket, tat in zip(buckets, tats, strict=True)]
