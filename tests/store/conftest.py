"""Fixtures of the store tests: a migrated database on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infermesh.store import Database
from tests.support.postgres import require_postgres, temporary_postgres_database

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database: a SQLite file, or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'infermesh.db'}"
        return
    require_postgres()
    async with temporary_postgres_database() as url:
        yield url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated :class:`Database`, disposed after the test."""
    db = Database(database_url)
    await db.migrate()
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
async def connections(database: Database) -> AsyncIterator[list[Database]]:
    """``database`` and three more engines on its URL: separate connection pools, as
    separate gateway processes would have, for tests of concurrent writers."""
    others = [Database(database.url) for _ in range(3)]
    try:
        yield [database, *others]
    finally:
        for db in others:
            await db.dispose()
