"""``infermesh serve``: the gateway, with an in-process worker on the embedded default."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from infermesh.accounts.service import AccountService
from infermesh.billing.ledger import CreditLedger
from infermesh.billing.money import parse_usd
from infermesh.catalog.store import CatalogFile
from infermesh.cli.options import (
    ConfigFile,
    DatabaseUrl,
    DataDir,
    freeze_heap,
    installed,
    make_settings,
)
from infermesh.config import Settings
from infermesh.errors import ConfigError
from infermesh.store.database import Database
from infermesh.telemetry import configure_logging

console = Console(stderr=True)


async def _prepare(settings: Settings) -> str | None:
    """Migrate the database and, on an empty one, create the first account and key and
    grant it ``bootstrap_grant`` USD of credit."""
    try:
        grant = parse_usd(settings.bootstrap_grant)
    except ValueError as exc:
        raise ConfigError(f"INFERMESH_BOOTSTRAP_GRANT: {exc}") from None
    database = Database.from_settings(settings)
    try:
        await database.migrate()
        created = await AccountService(database).bootstrap()
        if created is not None and grant:
            await CreditLedger(database).credit(
                created.record.account_id,
                grant,
                kind="grant",
                reference="bootstrap",
                reason="welcome grant of the first account",
            )
    finally:
        await database.dispose()
    return created.key if created else None


async def _check_redis(settings: Settings) -> None:
    """Fail now, with a clear message, if the configured Redis does not answer."""
    if not settings.redis_url:
        return
    from infermesh.limits.setup import check_store, limit_store  # only serve needs Redis

    store = limit_store(settings)
    try:
        await check_store(settings, store)
    finally:
        await store.close()


def serve(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Run the in-process worker.")
    ] = True,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log lines as JSON.")] = False,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            help="Redis that keeps the rate limits, shared by every gateway that uses it "
            "(env INFERMESH_REDIS_URL). Without it, limits are kept in this process.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the gateway (OpenAI-compatible API) and an in-process worker."""
    settings = make_settings(
        data_dir=data_dir,
        database_url=database_url,
        config=config,
        host=host,
        port=port,
        embedded_worker=worker,
        log_json=log_json or None,
        redis_url=redis_url,
    )
    configure_logging(level=settings.log_level, as_json=settings.log_json)
    catalog = CatalogFile(settings.catalog_path)
    if not catalog.exists():
        catalog.save(catalog.load_or_default())
    try:
        asyncio.run(_check_redis(settings))
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    first_key = asyncio.run(_prepare(settings))
    _print_welcome(settings, first_key, [spec.id for spec in catalog.load()])
    # Imported here so that the other commands start without the web stack.
    import uvicorn

    from infermesh.gateway.app import create_app

    app = create_app(settings, secrets=dict(os.environ))
    freeze_heap()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        **server_options(),
    )


def server_options() -> dict[str, Any]:
    """uvicorn's fast parts where they are installed (uvicorn[standard] brings them):
    the uvloop event loop and the httptools HTTP parser, else asyncio's loop and h11.
    WebSocket frames are not compressed: the workers' frames are small, and deflating
    each one costs more CPU than it saves."""
    return {
        "loop": "uvloop" if installed("uvloop") else "asyncio",
        "http": "httptools" if installed("httptools") else "h11",
        "ws_per_message_deflate": False,
    }


def _print_welcome(settings: Settings, first_key: str | None, models: list[str]) -> None:
    base_url = f"http://{settings.host}:{settings.port}/v1"
    if first_key:
        console.print(
            Panel.fit(
                f"[bold]{first_key}[/bold]\n\nThis is the first API key of account 'default'"
                f" (granted ${settings.bootstrap_grant} of credit). "
                "It is shown once and never again: save it now.",
                title="API key",
                border_style="green",
            )
        )
    lines = [
        f"base_url  {base_url}",
        f"models    {', '.join(models) or '(none)'}",
        f"data dir  {settings.data_dir.resolve()}",
    ]
    console.print(Panel.fit("\n".join(lines), title="infermesh gateway", border_style="cyan"))
    model = models[0] if models else "MODEL"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}]})
    console.print(
        "Try it (KEY is your API key):\n"
        f'  curl {base_url}/chat/completions -H "Authorization: Bearer $KEY" '
        f"-H 'Content-Type: application/json' -d '{body}'",
        soft_wrap=True,
        markup=False,
    )
