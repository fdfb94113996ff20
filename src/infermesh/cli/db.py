"""``infermesh db``: migrations, and how every CLI command opens the database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

from infermesh.cli.options import DatabaseUrl, DataDir, make_settings
from infermesh.config import Settings
from infermesh.errors import ConfigError, InfermeshError
from infermesh.store import Database, head_revision

T = TypeVar("T")

db_app = typer.Typer(
    help="Inspect and upgrade the database schema.",
    no_args_is_help=True,
)


def fail(message: str) -> NoReturn:
    """Print ``message`` in red on stderr and exit with status 1."""
    Console(stderr=True).print(f"[red]Error:[/red] {escape(message)}")
    raise typer.Exit(1)


async def _with_database(
    settings: Settings, action: Callable[[Database], Awaitable[T]], migrate: bool
) -> T:
    database = Database.from_settings(settings)
    try:
        if migrate:
            await database.migrate()
        return await action(database)
    finally:
        await database.dispose()


def run_with_database(
    settings: Settings, action: Callable[[Database], Awaitable[T]], *, migrate: bool = True
) -> T:
    """Open the database of ``settings``, migrate it (by default), run ``action``, close it.

    Errors a user can act on (an unknown id, an unreachable database) become a red
    message on stderr and exit status 1, without a traceback.
    """
    try:
        return asyncio.run(_with_database(settings, action, migrate))
    except InfermeshError as exc:
        fail(exc.message)
    except (ConfigError, OSError) as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"database error: {str(exc).splitlines()[0]}")


@db_app.command("upgrade")
def upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Apply every pending migration (safe to run at any time)."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    revision = run_with_database(settings, Database.migrate, migrate=False)
    Console().print(f"Database is at revision [bold]{escape(revision)}[/bold] (head).")


@db_app.command("current")
def current(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Show the revision the database is at."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    revision = run_with_database(settings, Database.current_revision, migrate=False)
    head = head_revision()
    if revision is None:
        Console().print(f"Not initialised; run [bold]infermesh db upgrade[/bold] (head is {head}).")
    elif revision == head:
        Console().print(f"{escape(revision)} (head)")
    else:
        Console().print(
            f"{escape(revision)} (head is {head}; run [bold]infermesh db upgrade[/bold])"
        )
