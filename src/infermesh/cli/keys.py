"""``infermesh keys``: create, list, revoke and rotate API keys."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from infermesh.accounts import AccountService, CreatedKey, KeyRecord
from infermesh.accounts.setup import build_accounts
from infermesh.cli.db import run_with_database
from infermesh.cli.options import DatabaseUrl, DataDir, JsonOutput, make_settings
from infermesh.config import Settings
from infermesh.store import Database

T = TypeVar("T")

keys_app = typer.Typer(help="Create, list, revoke and rotate API keys.", no_args_is_help=True)

AccountName = Annotated[str, typer.Option("--account", help="Account the key belongs to.")]
AccountFilter = Annotated[
    str | None, typer.Option("--account", help="Only this account's keys.", show_default=False)
]
KeyName = Annotated[
    str | None, typer.Option("--name", help="A label for the key.", show_default=False)
]
Tier = Annotated[str, typer.Option("--tier", help="Tier of the account if it is created now.")]
KeyId = Annotated[str, typer.Argument(help="Id of the key (key_…).", show_default=False)]


def _with_accounts(settings: Settings, action: Callable[[AccountService], Awaitable[T]]) -> T:
    """Run ``action`` on the account service; with a Redis URL (INFERMESH_REDIS_URL),
    the gateways hear of a change at once, else within their key cache TTL."""

    async def run(database: Database) -> T:
        service = build_accounts(settings, database, cache_keys=False)
        try:
            return await action(service)
        finally:
            await service.close()

    return run_with_database(settings, run)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _show_created(created: CreatedKey, *, as_json: bool, replaces: str = "") -> None:
    record = created.record
    if as_json:
        fields = {"key": created.key, "account": record.account, "id": record.id}
        if replaces:
            fields["replaces"] = replaces
        typer.echo(json.dumps(fields))
        return
    body = Text()
    body.append(created.key + "\n\n", style="bold green")
    body.append(f"id {record.id} · account {record.account}")
    body.append(f" · name {record.name}" if record.name else "")
    body.append(f" · replaces {replaces}" if replaces else "")
    body.append("\nStore it now: it will not be shown again.", style="yellow")
    Console().print(Panel(body, title="New API key", expand=False))


def _key_json(record: KeyRecord) -> dict[str, str | int | None]:
    return {
        "id": record.id,
        "account": record.account,
        "name": record.name,
        "prefix": record.prefix,
        "created_at": record.created_at.isoformat(),
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "last_used_at": record.last_used_at.isoformat() if record.last_used_at else None,
    }


def _key_table(records: list[KeyRecord]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "account", "name", "prefix", "created", "last used", "status"):
        table.add_column(column, no_wrap=column in ("id", "prefix", "status"))
    for record in records:
        status = "[red]revoked[/red]" if record.revoked else "[green]active[/green]"
        table.add_row(
            record.id,
            Text(record.account),
            Text(record.name or "-"),
            record.prefix + "…",
            _when(record.created_at),
            _when(record.last_used_at),
            status,
        )
    return table


@keys_app.command("create")
def create(
    account: AccountName,
    name: KeyName = None,
    tier: Tier = "free",
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key (and its account if it is new); the key is shown only once."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    created = _with_accounts(
        settings, lambda service: service.create_key(account, name=name, tier=tier)
    )
    _show_created(created, as_json=as_json)


@keys_app.command("list")
def list_keys(
    account: AccountFilter = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List API keys, revoked ones included (never the keys themselves)."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    records = _with_accounts(settings, lambda service: service.list_keys(account))
    if as_json:
        typer.echo(json.dumps([_key_json(record) for record in records]))
    elif records:
        Console().print(_key_table(records))
    else:
        Console().print("No API keys.")


@keys_app.command("revoke")
def revoke(key_id: KeyId, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Revoke an API key; it stops working at once on the gateways whose Redis
    INFERMESH_REDIS_URL names, else within their key cache TTL (5 s by default)."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    record = _with_accounts(settings, lambda service: service.revoke_key(key_id))
    Console().print(f"Revoked {record.id} (account {escape(record.account)}).")


@keys_app.command("rotate")
def rotate(
    key_id: KeyId,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Replace an API key by a new one (same account and name) and revoke the old one."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    created = _with_accounts(settings, lambda service: service.rotate_key(key_id))
    _show_created(created, as_json=as_json, replaces=key_id)
