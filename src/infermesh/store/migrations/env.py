"""Alembic environment of infermesh.

Migrations normally run through ``Database.migrate()``, which hands over an open
connection in ``config.attributes["connection"]``. Without one (the ``alembic``
command line, e.g. to autogenerate a revision), the URL comes from the Alembic
option ``sqlalchemy.url`` or else from infermesh's Settings.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from infermesh.store.tables import Base

target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    """Run the pending migrations on ``connection`` inside its transaction."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    """Open the configured database and migrate it (the ``alembic`` command line)."""
    from infermesh.config import Settings
    from infermesh.store.database import Database, transaction_lock

    url = context.config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url
    database = Database(url)
    try:
        async with database.engine.begin() as connection:
            await transaction_lock(connection, "infermesh.migrate")
            await connection.run_sync(run_migrations)
    finally:
        await database.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported")
given = context.config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:
    asyncio.run(run_standalone())
