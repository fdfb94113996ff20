"""Fixtures of the account tests: a migrated database on SQLite and on PostgreSQL (the
store tests' fixtures), and a count of the statements sent to it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import event

from infermesh.store import Database
from tests.store.conftest import database, database_url

__all__ = ["database", "database_url", "statements"]


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
