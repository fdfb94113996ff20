"""Fixtures of the billing tests: a migrated database on SQLite and PostgreSQL (the
store tests' fixtures), a hand-moved clock, the ledger on them, and accounts."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from infermesh.accounts import AccountService
from infermesh.billing.ledger import CreditLedger
from infermesh.store import Database
from tests.store.conftest import BACKENDS, connections, database, database_url
from tests.support.clock import Clock
from tests.support.postgres import (
    DATABASE_PREFIX,
    create_database,
    drop_database,
    require_postgres,
)

__all__ = [
    "clock",
    "connections",
    "database",
    "database_url",
    "gateway_database_url",
    "ledger",
    "new_account",
]

NewAccount = Callable[[str], Awaitable[int]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(database: Database, clock: Clock) -> CreditLedger:
    return CreditLedger(database, clock=clock)


@pytest.fixture
def new_account(database: Database) -> NewAccount:
    """Create an account (tier pro) by name and return its id."""

    async def create(name: str) -> int:
        return (await AccountService(database).create_account(name, tier="pro")).id

    return create


@pytest.fixture(params=BACKENDS)
def gateway_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """For a gateway started in a synchronous test: None (its own SQLite file in its
    data directory) or the URL of a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    require_postgres()
    name = DATABASE_PREFIX + secrets.token_hex(6)
    url = asyncio.run(create_database(name))
    try:
        yield url
    finally:
        asyncio.run(drop_database(name))
