"""``infermesh workers``: worker tokens of GPU operators, and the workers' state."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from itertools import groupby
from typing import Annotated, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from infermesh.accounts.worker_records import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_SLOTS
from infermesh.accounts.workers import (
    CreatedWorkerToken,
    WorkerRecord,
    WorkerScope,
    WorkerTokenService,
)
from infermesh.billing.money import CreditUnit
from infermesh.billing.usage import UsageLog, WorkerEarnings
from infermesh.billing.views import earnings_object
from infermesh.cli.credits import credit_unit, usd_text
from infermesh.cli.db import run_with_database
from infermesh.cli.options import DatabaseUrl, DataDir, JsonOutput, make_settings
from infermesh.config import Settings

T = TypeVar("T")

workers_app = typer.Typer(
    help="Worker tokens of GPU operators, and the workers they connect.", no_args_is_help=True
)
token_app = typer.Typer(help="Create worker tokens.", no_args_is_help=True)
workers_app.add_typer(token_app, name="token")

WorkerName = Annotated[
    str, typer.Option("--name", help="A name for the worker.", show_default=False)
]
Operator = Annotated[
    str, typer.Option("--operator", help="Account of the GPU operator (created if new).")
]
OperatorFilter = Annotated[
    str | None,
    typer.Option("--operator", help="Only this operator's workers.", show_default=False),
]
WorkerId = Annotated[str, typer.Argument(help="Id of the worker (wrk_…).", show_default=False)]
MaxConnections = Annotated[
    int,
    typer.Option("--max-connections", help="Live connections the token may hold at once."),
]
MaxSlots = Annotated[
    int,
    typer.Option(
        "--max-slots",
        help="Job slots one connection may announce over all its models (more are scaled down).",
    ),
]
AllowedModels = Annotated[
    str | None,
    typer.Option(
        "--models",
        help="Comma-separated catalog models the token may serve (default: any).",
        show_default=False,
    ),
]
_STATUS_STYLES = {"online": "green", "offline": "yellow", "revoked": "red"}


def _with_workers(settings: Settings, action: Callable[[WorkerTokenService], Awaitable[T]]) -> T:
    return run_with_database(settings, lambda database: action(WorkerTokenService(database)))


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _allowed_text(allowed: Sequence[str] | None) -> str:
    return "any" if allowed is None else ", ".join(allowed)


def _scope_text(scope: WorkerScope) -> str:
    return (
        f"up to {scope.max_connections} connections · {scope.max_slots} job slots each · "
        f"models: {_allowed_text(scope.allowed_models)}"
    )


def _show_created(created: CreatedWorkerToken, *, as_json: bool) -> None:
    record = created.record
    if as_json:
        typer.echo(json.dumps({"token": created.token, **_worker_view(record)}))
        return
    body = Text()
    body.append(created.token + "\n\n", style="bold green")
    body.append(f"id {record.id} · name {record.name} · operator {record.operator}\n")
    body.append(_scope_text(record.scope))
    body.append("\nStore it now: it will not be shown again.", style="yellow")
    Console().print(Panel(body, title="New worker token", expand=False))


def _worker_view(record: WorkerRecord) -> dict[str, object]:
    """A worker as ``--json`` prints it and ``show`` lists it (never its token)."""
    scope = record.scope
    return {
        "id": record.id,
        "name": record.name,
        "operator": record.operator,
        "prefix": record.prefix,
        "status": record.status,
        "node_id": record.node_id,
        "models": list(record.models),
        "max_connections": scope.max_connections,
        "max_slots": scope.max_slots,
        "allowed_models": None if scope.allowed_models is None else list(scope.allowed_models),
        "jobs_served": record.jobs_served,
        "jobs_failed": record.jobs_failed,
        "created_at": record.created_at.isoformat(),
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "last_seen_at": record.last_seen_at.isoformat() if record.last_seen_at else None,
    }


def _view_value(field: str, value: object) -> Text:
    """One value of :func:`_worker_view` as ``show`` prints it."""
    if field == "allowed_models":
        return Text(_allowed_text(value if isinstance(value, list) else None))
    if isinstance(value, list):
        return Text(", ".join(str(item) for item in value) or "-")
    return Text("-" if value is None else str(value))


def _view_table(view: dict[str, object]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    for field, value in view.items():
        table.add_row(field, _view_value(field, value))
    return table


def _worker_table(records: list[WorkerRecord]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    columns = (
        "id", "name", "operator", "status", "models", "allowed", "conns", "slots",
        "served", "failed", "last seen",
    )  # fmt: skip
    for column in columns:
        numeric = column in ("conns", "slots", "served", "failed")
        table.add_column(
            column, no_wrap=column in ("id", "status"), justify="right" if numeric else "left"
        )
    for record in records:
        style = _STATUS_STYLES[record.status]
        table.add_row(
            record.id,
            Text(record.name),
            Text(record.operator),
            Text(record.status, style=style),
            Text(", ".join(record.models) or "-"),
            Text(_allowed_text(record.scope.allowed_models)),
            str(record.scope.max_connections),
            str(record.scope.max_slots),
            str(record.jobs_served),
            str(record.jobs_failed),
            _when(record.last_seen_at),
        )
    return table


def _earnings_json(row: WorkerEarnings, unit: CreditUnit) -> dict[str, object]:
    return earnings_object(row, unit).model_dump()


def _figures(rows: list[WorkerEarnings]) -> list[str]:
    """Requests, tokens in and out, billed and earned, summed over ``rows``."""
    return [
        f"{sum(row.requests for row in rows):,}",
        f"{sum(row.prompt_tokens for row in rows):,}",
        f"{sum(row.completion_tokens for row in rows):,}",
        usd_text(sum(row.billed for row in rows)),
        usd_text(sum(row.earned for row in rows)),
    ]


def _earnings_table(rows: list[WorkerEarnings]) -> Table:
    """One section per operator: its workers (name, id below), then its total."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    table.add_column("operator / worker", min_width=2 + max(len(row.worker_id) for row in rows))
    for column in ("requests", "tokens in", "tokens out", "billed", "earned"):
        table.add_column(column, justify="right", no_wrap=True)
    for operator, group in groupby(rows, key=lambda row: row.operator):
        workers = list(group)
        table.add_row(Text(operator, style="bold"))
        for row in workers:
            worker = Text.assemble("  ", row.worker_name, "\n  ", (row.worker_id, "dim"))
            table.add_row(worker, *_figures([row]))
        table.add_row(Text("  total"), *_figures(workers), style="bold", end_section=True)
    return table


def _split_models(models: str | None) -> tuple[str, ...] | None:
    """``a, b,`` as ``("a", "b")``; None (any model) when the option was not given."""
    if models is None:
        return None
    return tuple(model.strip() for model in models.split(",") if model.strip())


@token_app.command("create")
def create_token(
    name: WorkerName,
    operator: Operator = "default",
    max_connections: MaxConnections = DEFAULT_MAX_CONNECTIONS,
    max_slots: MaxSlots = DEFAULT_MAX_SLOTS,
    models: AllowedModels = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a worker token (and the operator account if it is new); shown only once.

    The token allows --max-connections live connections, --max-slots job slots per
    connection, and the catalog models in --models (any if not given).
    """
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    scope = WorkerScope(max_connections, max_slots, _split_models(models))
    created = _with_workers(
        settings, lambda service: service.create(name, operator=operator, scope=scope)
    )
    _show_created(created, as_json=as_json)


@workers_app.command("list")
def list_workers(
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List workers with their status and job counts (never their tokens)."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    records = _with_workers(settings, lambda service: service.list())
    if as_json:
        typer.echo(json.dumps([_worker_view(record) for record in records]))
    elif records:
        Console().print(_worker_table(records))
    else:
        Console().print("No workers.")


@workers_app.command("show")
def show(
    worker_id: WorkerId,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show one worker: its state, job counts and what its token allows."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    view = _worker_view(_with_workers(settings, lambda service: service.get(worker_id)))
    if as_json:
        typer.echo(json.dumps(view))
    else:
        Console().print(_view_table(view))


@workers_app.command("revoke")
def revoke(worker_id: WorkerId, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Revoke a worker's token; a connected worker is disconnected within seconds."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    record = _with_workers(settings, lambda service: service.revoke(worker_id))
    Console().print(
        f"Revoked {record.id} ({escape(record.name)}, operator {escape(record.operator)}). "
        "If it is connected, the gateway disconnects it within a few seconds."
    )


@workers_app.command("earnings")
def earnings(
    operator: OperatorFilter = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """What each worker served for pay: requests, tokens, billed and earned (USD)."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    unit = credit_unit(settings)
    rows = run_with_database(
        settings, lambda database: UsageLog(database).earnings(operator=operator)
    )
    if as_json:
        typer.echo(json.dumps([_earnings_json(row, unit) for row in rows]))
    elif rows:
        Console().print(_earnings_table(rows))
    else:
        Console().print("No workers." if operator is None else f"No workers of {escape(operator)}.")
