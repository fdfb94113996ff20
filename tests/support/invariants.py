"""What must hold on a gateway once its requests are over, whatever happened to them:
nothing is held (worker slots, concurrency slots, credit holds) and the ledger adds up.

Suites that try to break the request path assert it after every test
(:func:`assert_nothing_held`), so that a leak shows where it happened.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import func, select

from infermesh.config import Settings
from infermesh.gateway.state import Services
from infermesh.store import Balance, Database, Hold, LedgerEntry, UsageEntry
from tests.support.gateway import RunningGateway
from tests.support.waiting import wait_until


@dataclass(frozen=True)
class LedgerState:
    """The ledger of one database, summed."""

    open_holds: int
    unbalanced: list[str]
    """One line per account whose cached balance, held amount, charges or earnings
    disagree with its ledger entries and usage records."""


def assert_nothing_held(gateway: RunningGateway, *, timeout: float = 20) -> None:
    """Every request of ``gateway`` has let go of everything, and its ledger is exact."""
    services: Services = gateway.app.state.services
    try:
        wait_until(lambda: not _held(services), timeout=timeout)
    except AssertionError:
        raise AssertionError(f"still held after {timeout}s: {_held(services)}") from None
    state = ledger_state(gateway.settings)
    assert state.open_holds == 0, f"{state.open_holds} credit holds left open"
    assert not state.unbalanced, "\n".join(state.unbalanced)


def wait_written(gateway: RunningGateway, *, timeout: float = 20) -> None:
    """Wait until ``gateway`` has written its settlements (they are written in batches,
    a few tens of milliseconds after each request)."""
    services: Services = gateway.app.state.services
    wait_until(
        lambda: not services.billing.slices.unwritten(),
        timeout=timeout,
        what="the gateway wrote its settlements",
    )


def _held(services: Services) -> dict[str, int]:
    counts = {
        "worker slots": services.registry.in_flight(),
        "waiting for a worker": services.registry.waiting(),
        "concurrency slots": services.limits.slots_held,
        "credit holds of running requests": services.billing.open_holds,
        "settlements not written, or credit slices not given back": (
            services.billing.slices.waiting()
        ),
    }
    return {what: count for what, count in counts.items() if count}


def ledger_state(settings: Settings) -> LedgerState:
    """The ledger summed (callable with or without a running loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _ledger_state(settings)).result()


async def _ledger_state(settings: Settings) -> LedgerState:
    database = Database.from_settings(settings)
    try:
        async with database.session(read_only=True) as session:
            open_holds = await session.scalar(
                select(func.count()).select_from(Hold).where(Hold.status == "open")
            )
            balances = (await session.scalars(select(Balance))).all()
            entries = {
                (account, kind): (int(balance), int(held))
                for account, kind, balance, held in await session.execute(
                    select(
                        LedgerEntry.account_id,
                        LedgerEntry.kind,
                        func.sum(LedgerEntry.balance_change),
                        func.sum(LedgerEntry.held_change),
                    ).group_by(LedgerEntry.account_id, LedgerEntry.kind)
                )
            }
            costs = dict(
                (account, int(cost))
                for account, cost in await session.execute(
                    select(UsageEntry.account_id, func.sum(UsageEntry.cost)).group_by(
                        UsageEntry.account_id
                    )
                )
            )
            earnings = dict(
                (account, int(earned))
                for account, earned in await session.execute(
                    select(
                        UsageEntry.operator_account_id, func.sum(UsageEntry.operator_earning)
                    ).group_by(UsageEntry.operator_account_id)
                )
            )
    finally:
        await database.dispose()
    unbalanced: list[str] = []
    for row in balances:
        account = row.account_id
        mine = {kind: sums for (owner, kind), sums in entries.items() if owner == account}
        balance = sum(sums[0] for sums in mine.values())
        held = sum(sums[1] for sums in mine.values())
        charged = -mine.get("charge", (0, 0))[0]
        earned = mine.get("earning", (0, 0))[0]
        facts = {
            "cached balance": (row.balance, balance),
            "cached held": (row.held, held),
            "held now": (row.held, 0),
            "charges vs usage costs": (charged, costs.get(account, 0)),
            "earnings vs usage earnings": (earned, earnings.get(account, 0)),
        }
        for what, (seen, expected) in facts.items():
            if seen != expected:
                unbalanced.append(f"account {account}: {what}: {seen} != {expected}")
    return LedgerState(int(open_holds or 0), unbalanced)
