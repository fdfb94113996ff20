"""``infermesh accounts``: an account's tier, and its statement."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from infermesh.accounts import AccountRecord
from infermesh.accounts.setup import build_accounts
from infermesh.billing.tiers import TierPolicy
from infermesh.cli.credits import AccountArgument, model_tiers_text, show
from infermesh.cli.db import fail, run_with_database
from infermesh.cli.options import DatabaseUrl, DataDir, JsonOutput, make_settings
from infermesh.config import Settings
from infermesh.store import Database

accounts_app = typer.Typer(help="Accounts: their tier and their credit.", no_args_is_help=True)
accounts_app.command("show")(show)

TierArgument = Annotated[
    str, typer.Argument(help="The tier, e.g. free, standard or pro.", show_default=False)
]


@accounts_app.command("tier")
def set_tier(
    account: AccountArgument,
    tier: TierArgument,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Move an account to another tier, which decides the model tiers it may use."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    policy = TierPolicy(settings.tier_access).tiers()
    if tier not in policy:
        # An account in a tier the policy does not name may use no model at all.
        fail(
            f"Unknown tier '{tier}'; the tiers are {', '.join(sorted(policy))} "
            "(INFERMESH_TIER_ACCESS configures them)."
        )
    record = run_with_database(
        settings, lambda database: _set_tier(settings, database, account, tier)
    )
    allowed = policy[tier]
    if as_json:
        fields = {"id": record.id, "account": record.name, "tier": record.tier}
        typer.echo(json.dumps({**fields, "model_tiers": allowed}))
        return
    Console().print(
        f"[bold]{escape(record.name)}[/bold] is now in tier [bold]{escape(record.tier)}[/bold] "
        f"(may use {escape(model_tiers_text(allowed))})."
    )


async def _set_tier(
    settings: Settings, database: Database, account: str, tier: str
) -> AccountRecord:
    """Set the tier, and tell the gateways (at once with a Redis URL, else within their
    key cache TTL)."""
    service = build_accounts(settings, database, cache_keys=False)
    try:
        return await service.set_tier(account, tier)
    finally:
        await service.close()
