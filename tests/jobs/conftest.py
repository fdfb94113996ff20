"""Fixtures of the job tests: a migrated database on SQLite and PostgreSQL (the store
tests' fixtures), a hand-moved clock, the job queue on them, and accounts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from infermesh.accounts import AccountService
from infermesh.jobs.queue import JobQueue
from infermesh.store import Database
from tests.store.conftest import connections, database, database_url
from tests.support.clock import Clock

__all__ = ["clock", "connections", "database", "database_url", "new_account", "queue"]

NewAccount = Callable[[str], Awaitable[int]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(database: Database, clock: Clock) -> JobQueue:
    return JobQueue(database, clock=clock)


@pytest.fixture
def new_account(database: Database) -> NewAccount:
    """Create an account by name and return its id."""

    async def create(name: str) -> int:
        return (await AccountService(database).create_account(name)).id

    return create
