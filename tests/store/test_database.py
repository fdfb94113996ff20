"""The database: URLs, migrations, pragmas and transactions, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.exc import IntegrityError

from infermesh.config import Settings
from infermesh.store import Account, ApiKey, Base, Database, head_revision, transaction_lock
from infermesh.store.database import normalize_url

MIGRATE_SCRIPT = """
import asyncio, sys
from infermesh.store import Database

async def main(url):
    db = Database(url)
    try:
        print(await db.migrate())
    finally:
        await db.dispose()

asyncio.run(main(sys.argv[1]))
"""


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _schema_differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5433/db", "postgresql+asyncpg://u:p@h:5433/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
        ("sqlite+aiosqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
    ],
)
def test_urls_get_an_async_driver(given: str, expected: str) -> None:
    assert normalize_url(given).render_as_string(hide_password=False) == expected


async def test_from_settings_uses_a_file_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    db = Database.from_settings(Settings(data_dir=data_dir))
    try:
        assert db.dialect == "sqlite"
        await db.migrate()
        assert (data_dir / "infermesh.db").is_file()
    finally:
        await db.dispose()


async def test_a_fresh_database_has_no_revision(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert await db.current_revision() is None
    finally:
        await db.dispose()


async def test_migrate_creates_the_tables(database: Database) -> None:
    assert await database.current_revision() == head_revision()
    async with database.engine.connect() as connection:
        tables = await connection.run_sync(_table_names)
    assert {"alembic_version", "accounts", "api_keys"} <= tables


async def test_migrate_twice_is_a_no_op(database: Database) -> None:
    async with database.session() as session, session.begin():
        session.add(Account(name="kept"))
    assert await database.migrate() == head_revision()
    assert await database.current_revision() == head_revision()
    async with database.session(read_only=True) as session:
        assert await session.scalar(select(Account.name)) == "kept"


async def test_tables_match_the_migrations(database: Database) -> None:
    async with database.engine.connect() as connection:
        assert await connection.run_sync(_schema_differences) == []


async def test_concurrent_processes_can_migrate(database_url: str) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATE_SCRIPT,
            database_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    results = await asyncio.gather(*(process.communicate() for process in processes))
    for process, (stdout, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr.decode()
        assert stdout.decode().strip() == head_revision()


async def test_foreign_keys_are_enforced(database: Database) -> None:
    with pytest.raises(IntegrityError):
        async with database.session() as session, session.begin():
            session.add(ApiKey(id="key_0", account_id=12345, prefix="sk-im-", key_hash="0" * 64))


async def test_timestamps_come_back_as_utc(database: Database) -> None:
    created = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    async with database.session() as session, session.begin():
        session.add(Account(name="timed", created_at=created))
    async with database.session(read_only=True) as session:
        stored = await session.scalar(select(Account.created_at))
    assert stored == created
    assert stored is not None and stored.tzinfo == UTC


async def test_server_default_timestamp_is_utc(database: Database) -> None:
    async with database.session() as session, session.begin():
        await session.execute(text("INSERT INTO accounts (name) VALUES ('raw')"))
    async with database.session(read_only=True) as session:
        account = await session.scalar(select(Account))
    assert account is not None and account.tier == "free"
    assert abs(account.created_at - datetime.now(UTC)) < timedelta(minutes=5)


async def test_read_then_write_transactions_do_not_lose_updates(database_url: str) -> None:
    databases = [Database(database_url) for _ in range(2)]
    await databases[0].migrate()
    async with databases[0].session() as session, session.begin():
        session.add(Account(name="counter", tier="0"))

    async def increment(db: Database) -> None:
        async with db.session() as session, session.begin():
            await transaction_lock(session, "test.counter")
            account = await session.scalar(select(Account).where(Account.name == "counter"))
            assert account is not None
            account.tier = str(int(account.tier) + 1)

    try:
        await asyncio.gather(*(increment(databases[i % 2]) for i in range(20)))
        async with databases[1].session(read_only=True) as session:
            assert await session.scalar(select(Account.tier)) == "20"
    finally:
        for db in databases:
            await db.dispose()


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'a' / 'b' / 'x.db'}")
    try:
        async with db.engine.connect() as connection:
            foreign_keys = await connection.scalar(text("PRAGMA foreign_keys"))
            journal_mode = await connection.scalar(text("PRAGMA journal_mode"))
            busy_timeout = await connection.scalar(text("PRAGMA busy_timeout"))
        assert (foreign_keys, journal_mode) == (1, "wal")
        assert busy_timeout is not None and busy_timeout >= 1000
    finally:
        await db.dispose()
