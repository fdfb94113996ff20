"""Cost of billing per request: one hold plus one settlement, on SQLite and PostgreSQL.

Run: python bench/billing_ledger.py [--requests 400] [--concurrency 16]
       [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test]
Each run pays ``requests`` requests from one account (the worst case: every hold locks
the same balance row), first one after another, then ``concurrency`` at a time. The
PostgreSQL run uses a throwaway database on the given server. Absolute numbers depend
on the machine; compare the runs of one invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from infermesh.accounts.records import Principal
from infermesh.accounts.service import AccountService
from infermesh.billing.ledger import CreditLedger
from infermesh.billing.pricing import Pricing
from infermesh.billing.service import BillingService, Outcome
from infermesh.billing.tiers import TierPolicy
from infermesh.billing.usage import UsageLog
from infermesh.catalog.spec import ModelSpec
from infermesh.protocol.chat import ChatCompletionRequest, Usage
from infermesh.store.database import Database

SPEC = ModelSpec(
    id="bench",
    pricing=Pricing.model_validate({"input_per_million": "0.5", "output_per_million": "1.5"}),
)
REQUEST = ChatCompletionRequest.model_validate(
    {"model": "bench", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 64}
)
USAGE = Usage(prompt_tokens=12, completion_tokens=64, total_tokens=76)


async def pay_one(billing: BillingService, principal: Principal) -> None:
    charge_id = f"chatcmpl-{secrets.token_hex(12)}"
    charge = await billing.authorize(
        principal, SPEC, REQUEST, charge_id=charge_id, request_id=charge_id
    )
    await billing.settle(
        charge, Outcome(status="succeeded", usage=USAGE, stream=False, latency_ms=1)
    )


async def run(url: str, requests: int, concurrency: int) -> dict[str, float]:
    database = Database(url)
    await database.migrate()
    try:
        created = await AccountService(database).create_key("bench", tier="pro")
        ledger = CreditLedger(database)
        await ledger.credit(
            created.record.account_id, 10**12, kind="grant", reference="bench", reason="bench"
        )
        billing = BillingService(
            ledger, UsageLog(database), tiers=TierPolicy(), hold_ttl=timedelta(minutes=5)
        )
        principal = Principal(created.record.id, created.record.account_id, "bench", "pro")
        started = time.perf_counter()
        for _ in range(requests):
            await pay_one(billing, principal)
        sequential = requests / (time.perf_counter() - started)
        gate = asyncio.Semaphore(concurrency)

        async def gated() -> None:
            async with gate:
                await pay_one(billing, principal)

        started = time.perf_counter()
        await asyncio.gather(*(gated() for _ in range(requests)))
        concurrent = requests / (time.perf_counter() - started)
        totals = await ledger.ledger_totals(created.record.account_id)
        balance = await ledger.balance(created.record.account_id)
        assert totals == balance, (totals, balance)
        return {"sequential": sequential, "concurrent": concurrent}
    finally:
        await database.dispose()


async def with_postgres(server: str, requests: int, concurrency: int) -> dict[str, float]:
    name = f"infermesh_bench_{secrets.token_hex(4)}"
    admin = make_url(server).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(server).set(database=name)
            return await run(url.render_as_string(hide_password=False), requests, concurrency)
        finally:
            await connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--postgres", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        sqlite_url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
        results = {"sqlite": asyncio.run(run(sqlite_url, args.requests, args.concurrency))}
    if args.postgres:
        results["postgresql"] = asyncio.run(
            with_postgres(args.postgres, args.requests, args.concurrency)
        )
    print(f"{args.requests} paid requests (hold + settle), one account")
    for store, rates in results.items():
        print(
            f"{store:11} one at a time {rates['sequential']:7.0f} req/s   "
            f"{args.concurrency} at a time {rates['concurrent']:7.0f} req/s   "
            f"({1000 / rates['sequential']:.2f} ms per request)"
        )


if __name__ == "__main__":
    main()
