"""Fixtures of the store tests: a migrated database on SQLite and on PostgreSQL.

Migrating takes a while (most of a second on PostgreSQL), so the migrations run once
per session and backend, into a template database; each test that uses ``database``
gets a fresh copy of it. Tests of the migrations themselves start from an empty
``database_url``.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infermesh.store import Database
from tests.support.postgres import (
    DATABASE_PREFIX,
    create_database,
    drop_database,
    require_postgres,
    temporary_postgres_database,
)

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]

_TEMPLATES = pytest.StashKey[dict[str, str]]()
"""Per session: backend → the migrated template (a SQLite file, a PostgreSQL database)."""


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a database of its own: a SQLite file, or a throwaway PostgreSQL
    database. Empty, unless the test uses ``database``: then a copy of the template
    migrated once per session."""
    migrated = "database" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "data" / "infermesh.db"
        if migrated:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(await _sqlite_template(request), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    require_postgres()
    template = await _postgres_template(request.config) if migrated else None
    async with temporary_postgres_database(template=template) as url:
        yield url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated :class:`Database`, disposed after the test."""
    db = Database(database_url)
    await db.migrate()  # a no-op on the copy of the template; it checks the revision
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


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await db.migrate()
    finally:
        await db.dispose()  # closes every connection: the template is then free to copy


async def _sqlite_template(request: pytest.FixtureRequest) -> str:
    """The SQLite file migrated once this session."""
    templates = request.config.stash.setdefault(_TEMPLATES, {})
    if "sqlite" not in templates:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        path = factory.mktemp("migrated-template") / "infermesh.db"
        await _migrate(f"sqlite+aiosqlite:///{path}")
        templates["sqlite"] = str(path)
    return templates["sqlite"]


async def _postgres_template(config: pytest.Config) -> str:
    """The PostgreSQL database migrated once this session (dropped when it ends)."""
    templates = config.stash.setdefault(_TEMPLATES, {})
    if "postgresql" not in templates:
        name = DATABASE_PREFIX + "template_" + secrets.token_hex(6)
        url = await create_database(name)
        config.add_cleanup(lambda: asyncio.run(drop_database(name)))
        await _migrate(url)
        templates["postgresql"] = name
    return templates["postgresql"]
