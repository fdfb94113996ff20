"""Cost of rate limiting per request: one admission plus its finish, in-process and Redis.

Run: python bench/rate_limits.py [--requests 2000] [--concurrency 16]
       [--redis redis://127.0.0.1:6379/0]
Each request of one account is admitted under all four limits (requests and tokens per
minute, tokens per day, concurrency) and then finished (its real token count replaces
its budget, its slot is released), first one after another, then ``concurrency`` at a
time. The limits are high enough that nothing is refused, so every request pays the full
path. Absolute numbers depend on the machine; compare the runs of one invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path

import redis

from infermesh.accounts.service import AccountService
from infermesh.limits.book import LimitBook
from infermesh.limits.memory import MemoryLimitStore
from infermesh.limits.policy import TierLimits
from infermesh.limits.redis_store import RedisLimitStore
from infermesh.limits.service import RateLimiter
from infermesh.limits.store import LimitStore
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.store.database import Database

REQUEST = ChatCompletionRequest.model_validate(
    {"model": "bench", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 64}
)
HIGH = {
    "requests_per_minute": 10**9,
    "tokens_per_minute": 10**12,
    "tokens_per_day": 10**12,
    "concurrent_requests": 10**6,
}


async def run(store: LimitStore, prefix: str, requests: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        database = Database(f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}")
        await database.migrate()
        try:
            created = await AccountService(database).create_key("bench", tier="bench")
            principal = await AccountService(database).authenticate(created.key)
            assert principal is not None
            book = LimitBook(database, TierLimits({"bench": HIGH}))
            limiter = RateLimiter(store, book, prefix=prefix)

            async def one() -> None:
                admission = await limiter.admit(principal, REQUEST)
                await admission.finish(40)

            await one()  # warm the limits cache and the store's scripts
            started = time.perf_counter()
            for _ in range(requests):
                await one()
            serial = time.perf_counter() - started
            semaphore = asyncio.Semaphore(concurrency)

            async def bounded() -> None:
                async with semaphore:
                    await one()

            started = time.perf_counter()
            await asyncio.gather(*(bounded() for _ in range(requests)))
            parallel = time.perf_counter() - started
        finally:
            await store.close()
            await database.dispose()
    milliseconds = serial / requests * 1000
    return {"serial": requests / serial, "parallel": requests / parallel, "ms": milliseconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    prefix = f"bench-{secrets.token_hex(4)}"
    stores: list[tuple[str, LimitStore]] = [("in-process", MemoryLimitStore())]
    stores.append(("redis", RedisLimitStore(args.redis)))
    for name, store in stores:
        result = asyncio.run(run(store, prefix, args.requests, args.concurrency))
        print(
            f"{name:>10}: {result['serial']:8.0f} req/s one at a time "
            f"({result['ms']:.3f} ms each), {result['parallel']:8.0f} req/s "
            f"{args.concurrency} at a time"
        )
    client = redis.Redis.from_url(args.redis)
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()


if __name__ == "__main__":
    main()
