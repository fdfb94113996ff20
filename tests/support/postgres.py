"""Throwaway PostgreSQL databases for tests, on the server of this machine (or CI).

The server is ``postgresql://postgres@127.0.0.1:5432/test`` unless
``INFERMESH_TEST_POSTGRES_URL`` names another (any database on it; used to create and
drop the throwaway ones). Tests that need PostgreSQL call :func:`require_postgres`:
an unreachable server FAILS the test (a skip would hide a gap), unless
``INFERMESH_SKIP_POSTGRES=1`` is set, which skips it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

DEFAULT_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
ADMIN_URL_ENV = "INFERMESH_TEST_POSTGRES_URL"
SKIP_ENV = "INFERMESH_SKIP_POSTGRES"
DATABASE_PREFIX = "infermesh_t_"


def admin_url() -> URL:
    """The SQLAlchemy URL (asyncpg) of the database used to create throwaway ones."""
    return make_url(os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL)).set(
        drivername="postgresql+asyncpg"
    )


def _dsn(url: URL) -> str:
    """``url`` as a plain libpq DSN that asyncpg accepts."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def skip_requested() -> bool:
    """Whether ``INFERMESH_SKIP_POSTGRES=1`` asks to skip PostgreSQL tests."""
    return os.environ.get(SKIP_ENV, "") == "1"


async def _probe(connect_timeout: float) -> bool:
    try:
        connection = await asyncpg.connect(_dsn(admin_url()), timeout=connect_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


def postgres_available(*, timeout: float = 5.0) -> bool:
    """Whether the PostgreSQL server answers (callable with or without a running loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _probe(timeout)).result()


def require_postgres() -> None:
    """Skip if ``INFERMESH_SKIP_POSTGRES=1``; else fail unless PostgreSQL is reachable."""
    if skip_requested():
        pytest.skip(f"PostgreSQL tests skipped: {SKIP_ENV}=1")
    if not postgres_available():
        pytest.fail(
            f"PostgreSQL is not reachable at {admin_url().render_as_string()}; "
            f"start it, or set {SKIP_ENV}=1 to skip these tests explicitly"
        )


async def create_database(name: str, *, template: str | None = None) -> str:
    """Create the database ``name`` on the test server (a copy of the database
    ``template`` if given: nobody may be connected to that one); return its asyncpg URL."""
    statement = f'CREATE DATABASE "{name}"'
    if template is not None:
        statement += f' TEMPLATE "{template}"'
    connection = await asyncpg.connect(_dsn(admin_url()))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()
    return admin_url().set(database=name).render_as_string(hide_password=False)


async def drop_database(name: str) -> None:
    """Drop the database ``name``, disconnecting whoever is still connected."""
    connection = await asyncpg.connect(_dsn(admin_url()))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@asynccontextmanager
async def temporary_postgres_database(*, template: str | None = None) -> AsyncIterator[str]:
    """A fresh database for the duration of the block, empty or a copy of ``template``;
    yields its asyncpg URL.

    The URL is ``postgresql+asyncpg://…/infermesh_t_<hex>``; the database is dropped
    (WITH (FORCE)) on exit.
    """
    name = DATABASE_PREFIX + secrets.token_hex(6)
    url = await create_database(name, template=template)
    try:
        yield url
    finally:
        await drop_database(name)


@contextmanager
def postgres_database() -> Iterator[str]:
    """:func:`temporary_postgres_database` for synchronous tests: a throwaway database
    (its asyncpg URL), checked reachable first, dropped afterwards."""
    require_postgres()
    name = DATABASE_PREFIX + secrets.token_hex(6)
    url = asyncio.run(create_database(name))
    try:
        yield url
    finally:
        asyncio.run(drop_database(name))
