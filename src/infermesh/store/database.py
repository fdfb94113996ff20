"""The database: an async SQLAlchemy engine, its sessions and its migrations.

One :class:`Database` serves SQLite (the default, a file in the data directory) and
PostgreSQL (``postgresql+asyncpg://…``) with the same code and the same migrations.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

if TYPE_CHECKING:
    from infermesh.config import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_READ_ONLY_OPTION = "infermesh_read_only"
_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


def normalize_url(url: str | URL) -> URL:
    """``url`` with an async driver: ``postgres(ql)://`` → asyncpg, ``sqlite://`` → aiosqlite."""
    parsed = make_url(url)
    driver = _DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def migrations_config() -> Config:
    """An Alembic configuration for infermesh's migrations; no ``alembic.ini`` needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest migration revision shipped with this version of infermesh."""
    head = ScriptDirectory.from_config(migrations_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


async def transaction_lock(connection: AsyncConnection | AsyncSession, name: str) -> None:
    """Serialize transactions that take the lock ``name``, until this one ends.

    PostgreSQL takes a transaction-scoped advisory lock. On SQLite nothing is needed: a
    :meth:`Database.session` (not read-only) already holds the database's write lock.
    """
    conn = await connection.connection() if isinstance(connection, AsyncSession) else connection
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(name.encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_on_begin), then set the pragmas
    # outside any transaction (foreign_keys is ignored inside one).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode (it stays so, in the file). Switching needs the
    database to itself and SQLite may answer "locked" at once, without the busy
    timeout, when another process opens a new database at the same moment: so it is
    tried again for a while."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            mode = cursor.fetchone()
            if mode is not None and str(mode[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # sqlite3's OperationalError, or the driver's wrapper
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_on_begin(connection: Connection) -> None:
    # A writing transaction takes the write lock up front (waiting up to the busy
    # timeout), so read-then-write can neither race nor fail on a stale snapshot.
    read_only = connection.get_execution_options().get(_READ_ONLY_OPTION, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _prepare_sqlite_file(url: URL) -> None:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _create_engine(url: URL) -> AsyncEngine:
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def _upgrade(connection: Connection, config: Config) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


class Database:
    """The system of record: an async engine, sessions over it, and its migrations.

    ``session()`` gives a transaction that may write: on SQLite it takes the write lock
    at its first statement (``BEGIN IMMEDIATE``), so read-then-write is safe; on
    PostgreSQL use ``SELECT … FOR UPDATE`` or :func:`transaction_lock` for that.
    ``session(read_only=True)`` is for transactions that only read: on SQLite they run
    beside writers on a snapshot (PostgreSQL does not enforce the promise).
    """

    def __init__(self, url: str | URL) -> None:
        self.url = normalize_url(url)
        self.engine = _create_engine(self.url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        read_only_engine = self.engine.execution_options(**{_READ_ONLY_OPTION: True})
        self._read_sessions = async_sessionmaker(read_only_engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database named by ``settings`` (a SQLite file in the data directory by default)."""
        return cls(settings.resolved_database_url)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.url.get_backend_name()

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    def session(self, *, read_only: bool = False) -> AsyncSession:
        """A new session, to use as ``async with db.session() as s, s.begin(): …``."""
        return self._read_sessions() if read_only else self._sessions()

    async def migrate(self) -> str:
        """Bring the schema up to the newest migration; a no-op when it is already there.

        Safe when several processes start at once: PostgreSQL serializes them with an
        advisory lock, SQLite with its write lock. Returns the revision now current.
        """
        async with self.engine.begin() as connection:
            await transaction_lock(connection, "infermesh.migrate")
            await connection.run_sync(_upgrade, migrations_config())
        return head_revision()

    async def current_revision(self) -> str | None:
        """The revision the database is at, or None if it was never migrated."""
        async with self.engine.connect() as connection:
            return await connection.run_sync(_current)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
