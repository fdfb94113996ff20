"""``infermesh credits``: grant credit to accounts and show their statements.

Also how the command line shows money: exact USD, and display credits beside it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Annotated, TypeVar

import typer
from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from infermesh.accounts import AccountService
from infermesh.billing.admin import CreditAdmin, Statement, parse_amount
from infermesh.billing.ledger import CreditLedger
from infermesh.billing.money import CreditUnit, format_usd, parse_usd
from infermesh.billing.records import EntryRecord
from infermesh.billing.tiers import ANY_TIER, TierPolicy
from infermesh.billing.views import amount as amount_object
from infermesh.cli.db import fail, run_with_database
from infermesh.cli.options import DatabaseUrl, DataDir, JsonOutput, make_settings
from infermesh.config import Settings
from infermesh.errors import InvalidRequest

T = TypeVar("T")

credits_app = typer.Typer(
    help="Grant credit to accounts and show their balances and ledgers.", no_args_is_help=True
)

AccountArgument = Annotated[str, typer.Argument(help="Name of the account.", show_default=False)]
AmountArgument = Annotated[
    str, typer.Argument(help='Amount in USD, e.g. "5" or "0.25".', show_default=False)
]
Reason = Annotated[
    str,
    typer.Option(
        "--reason", help="Why the credit is granted (kept in the ledger).", show_default=False
    ),
]
Reference = Annotated[
    str | None,
    typer.Option(
        "--reference",
        help="Idempotency key: a second grant with the same reference is refused.",
        show_default=False,
    ),
]
EntryCount = Annotated[
    int, typer.Option("--entries", min=1, max=200, help="How many of the newest ledger entries.")
]
_MICRO_CREDIT = Decimal("0.000001")


def credit_unit(settings: Settings) -> CreditUnit:
    """The display credit that ``settings`` configure (INFERMESH_CREDIT_USD)."""
    try:
        return CreditUnit(parse_usd(settings.credit_usd))
    except ValueError as exc:
        fail(f"INFERMESH_CREDIT_USD: {exc}")


def usd_text(micro: int, *, signed: bool = False) -> str:
    """``micro`` micro-USD as exact USD: ``$0.25``, ``-$0.0015``; ``+$5`` if ``signed``."""
    sign = "-" if micro < 0 else "+" if signed and micro > 0 else ""
    return f"{sign}${format_usd(abs(micro))}"


def credits_text(micro: int, unit: CreditUnit) -> str:
    """``micro`` micro-USD in display credits, to six decimals at most: ``1,250.5``."""
    text = f"{(Decimal(micro) / unit.micro_per_credit).quantize(_MICRO_CREDIT):,f}"
    return text.rstrip("0").rstrip(".")


def amount_json(micro: int, unit: CreditUnit) -> dict[str, object]:
    """An amount as the JSON output shows it (the /admin API's shape)."""
    return amount_object(micro, unit).model_dump()


def model_tiers(settings: Settings, tier: str) -> list[str]:
    """The model tiers an account in ``tier`` may use (``["*"]`` means all of them)."""
    return TierPolicy(settings.tier_access).tiers().get(tier, [])


def model_tiers_text(tiers: list[str]) -> str:
    """``tiers`` (from :func:`model_tiers`) in words."""
    if ANY_TIER in tiers:
        return "every model tier"
    return "model tiers " + ", ".join(tiers) if tiers else "no model tier"


def _with_admin(settings: Settings, action: Callable[[CreditAdmin], Awaitable[T]]) -> T:
    return run_with_database(
        settings,
        lambda database: action(CreditAdmin(AccountService(database), CreditLedger(database))),
    )


def _entry_json(entry: EntryRecord) -> dict[str, object]:
    return {
        "id": entry.id,
        "kind": entry.kind,
        "balance_change": entry.balance_change,
        "held_change": entry.held_change,
        "balance_after": entry.balance_after,
        "reference": entry.reference,
        "reason": entry.reason,
        "created_at": entry.created_at.isoformat(),
    }


def _account_json(statement: Statement, settings: Settings, unit: CreditUnit) -> dict[str, object]:
    """The account, its tier and its balance (without the ledger entries)."""
    account, balance = statement.account, statement.balance
    return {
        "id": account.id,
        "account": account.name,
        "tier": account.tier,
        "model_tiers": model_tiers(settings, account.tier),
        "balance": amount_json(balance.balance, unit),
        "held": amount_json(balance.held, unit),
        "available": amount_json(balance.available, unit),
        "credit_usd": format_usd(unit.micro_per_credit),
    }


def _balances(statement: Statement, unit: CreditUnit) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column()
    grid.add_column(justify="right")
    grid.add_column(justify="right")
    balance = statement.balance
    for label, micro in (
        ("balance", balance.balance),
        ("held", balance.held),
        ("available", balance.available),
    ):
        grid.add_row(label, usd_text(micro), f"{credits_text(micro, unit)} credits")
    return grid


def _change(entry: EntryRecord) -> Text:
    """The entry's change to the balance, and below it (dim) its change to the held part."""
    lines = [usd_text(entry.balance_change, signed=True)] if entry.balance_change else []
    if entry.held_change:
        lines.append(f"held {usd_text(entry.held_change, signed=True)}")
    return Text("\n".join(lines), style="dim" if not entry.balance_change else "")


def _entries_table(entries: list[EntryRecord]) -> Table:
    """Newest first; the reference and reason go under the time, so 80 columns suffice."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    widest = max(len(entry.reference) for entry in entries)
    table.add_column("time / reference / reason", min_width=widest, overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("change", no_wrap=True, justify="right")
    table.add_column("balance after", no_wrap=True, justify="right")
    for entry in entries:
        cause = Text.assemble(
            entry.created_at.strftime("%Y-%m-%d %H:%M:%S"), "\n", (entry.reference, "dim")
        )
        if entry.reason:
            cause.append("\n" + entry.reason, style="italic")
        table.add_row(cause, entry.kind, _change(entry), usd_text(entry.balance_after))
    return table


def _print_statement(statement: Statement, settings: Settings, unit: CreditUnit) -> None:
    account = statement.account
    heading = Text.assemble(
        (account.name, "bold"),
        f" · tier {account.tier} ({model_tiers_text(model_tiers(settings, account.tier))})",
    )
    entries = _entries_table(statement.entries) if statement.entries else "No ledger entries."
    Console().print(
        Group(heading, _balances(statement, unit), "", "Newest ledger entries:", entries)
    )


@credits_app.command("grant", context_settings={"ignore_unknown_options": True})
def grant(
    account: AccountArgument,
    amount: AmountArgument,
    reason: Reason,
    reference: Reference = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Add credit (in USD) to an account, and show its new balance."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    unit = credit_unit(settings)
    try:
        micro = parse_amount(amount)
    except InvalidRequest as exc:
        fail(exc.message)
    statement = _with_admin(
        settings, lambda admin: admin.grant(account, micro, reason=reason, reference=reference)
    )
    if as_json:
        fields = _account_json(statement, settings, unit)
        granted = {"granted": amount_json(micro, unit), "reference": reference}
        typer.echo(json.dumps({**fields, **granted}))
        return
    balance = statement.balance.balance
    Console().print(
        f"Granted {usd_text(micro)} ({credits_text(micro, unit)} credits) to "
        f"[bold]{escape(account)}[/bold]. Balance now {usd_text(balance)} "
        f"({credits_text(balance, unit)} credits), {usd_text(statement.balance.available)} "
        "available."
    )


@credits_app.command("show")
def show(
    account: AccountArgument,
    entries: EntryCount = 20,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show an account's tier, balance (held, available) and newest ledger entries."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    unit = credit_unit(settings)
    statement = _with_admin(settings, lambda admin: admin.statement(account, entries=entries))
    if as_json:
        listed = [_entry_json(entry) for entry in statement.entries]
        typer.echo(json.dumps({**_account_json(statement, settings, unit), "entries": listed}))
    else:
        _print_statement(statement, settings, unit)
