"""``infermesh payouts``: operators' payouts, and ``infermesh payouts run`` to pay every
operator owed at least the minimum, in USDC from the treasury."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infermesh.billing.ledger import CreditLedger
from infermesh.cli.credits import usd_text
from infermesh.cli.db import fail, run_with_database
from infermesh.cli.options import DatabaseUrl, DataDir, JsonOutput, make_settings
from infermesh.config import Settings
from infermesh.store import Database

if TYPE_CHECKING:  # the payments modules import web3 and eth-account: only when used
    from infermesh.payments.payouts import PayoutRecord, PayoutService, RunReport

T = TypeVar("T")
payouts_app = typer.Typer(help="Operators' USDC payouts.", invoke_without_command=True)
Limit = Annotated[int, typer.Option("--limit", min=1, max=500, help="How many payouts.")]


def _with_payouts(settings: Settings, action: Callable[[PayoutService], Awaitable[T]]) -> T:
    """Run ``action`` on the payout service of ``settings`` (payments must be on)."""
    if not settings.payments_enabled:
        fail(
            "USDC payments are off: set INFERMESH_PAYMENTS_RPC_URL, "
            "INFERMESH_PAYMENTS_USDC_ADDRESS (or _NETWORK) and INFERMESH_PAYMENTS_TREASURY."
        )

    async def run(db: Database) -> T:
        from infermesh.payments.setup import build_payments

        parts = build_payments(settings, db, CreditLedger(db))
        assert parts is not None
        try:
            return await action(parts.payouts)
        finally:
            await parts.deposits.chain.close()

    return run_with_database(settings, run)


def _view(record: PayoutRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "account": record.account,
        "address": record.address,
        "amount_micro_usd": record.amount,
        "status": record.status,
        "tx_hash": record.tx_hash,
        "error": record.error,
        "created_at": record.created_at.isoformat(),
        "paid_at": record.paid_at.isoformat() if record.paid_at else None,
    }


def _table(views: list[dict[str, object]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "account", "amount", "status", "tx hash", "created"):
        table.add_column(column)
    for view in views:
        tx_hash = str(view["tx_hash"])
        table.add_row(
            str(view["id"]),
            Text(str(view["account"])),
            usd_text(int(str(view["amount_micro_usd"]))),
            str(view["status"]),
            f"{tx_hash[:10]}…{tx_hash[-6:]}",
            str(view["created_at"])[:16].replace("T", " "),
        )
    return table


@payouts_app.callback()
def payouts(
    ctx: typer.Context,
    limit: Limit = 20,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """The newest payouts of all operators."""
    if ctx.invoked_subcommand is not None:
        return
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    records = _with_payouts(settings, lambda service: service.recent(limit=limit))
    views = [_view(record) for record in records]
    if as_json:
        typer.echo(json.dumps({"object": "list", "data": views}))
        return
    Console().print(_table(views) if views else "No payouts.")


@payouts_app.command("run")
def run(
    as_json: JsonOutput = False, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Pay every operator with a payout wallet its unpaid earnings, if at least the
    minimum: one USDC transfer each from the treasury (INFERMESH_PAYMENTS_TREASURY_KEY).
    Safe to repeat: an operator whose last payout is not final yet is passed over."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    report: RunReport = _with_payouts(settings, lambda service: service.run())
    sent = [_view(record) for record in report.sent]
    skipped = [{"account": name, "reason": why} for name, why in report.skipped]
    if as_json:
        typer.echo(json.dumps({"object": "payout_run", "sent": sent, "skipped": skipped}))
        return
    console = Console()
    console.print(_table(sent) if sent else "No payout sent.")
    for item in skipped:
        console.print(Text(f"{item['account']}: {item['reason']}", style="dim"))
