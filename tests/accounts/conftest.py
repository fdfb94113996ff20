"""Fixtures of the account tests: a migrated database on SQLite and on PostgreSQL, and a
count of the statements sent to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from infermesh.store import Database
from tests.support.postgres import require_postgres, temporary_postgres_database

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated database (a SQLite file, or a throwaway PostgreSQL one), disposed after."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'infermesh.db'}")
        await db.migrate()
        try:
            yield db
        finally:
            await db.dispose()
        return
    require_postgres()
    async with temporary_postgres_database() as url:
        db = Database(url)
        await db.migrate()
        try:
            yield db
        finally:
            await db.dispose()


@dataclass
class Seconds:
    """A monotonic clock the test moves by hand (for the key cache)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


class Statements:
    """The SQL statements an engine sent, as they go (an engine event, no mock)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, *args: Any) -> None:
        self.sent.append(str(args[2]))

    def on(self, table: str, verb: str) -> int:
        """How many ``verb`` (SELECT, UPDATE…) statements touched ``table``."""
        return sum(1 for sql in self.sent if sql.lstrip().startswith(verb) and table in sql)


@pytest.fixture
def statements(database: Database) -> Iterator[Statements]:
    """Every statement ``database`` sends during the test."""
    counter = Statements()
    engine = database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", counter)
    try:
        yield counter
    finally:
        event.remove(engine, "before_cursor_execute", counter)
