"""The ``infermesh`` command line."""

from __future__ import annotations

import typer

from infermesh.cli.accounts import accounts_app
from infermesh.cli.credits import credits_app
from infermesh.cli.db import db_app
from infermesh.cli.keys import keys_app
from infermesh.cli.limits import limits_app
from infermesh.cli.models import models_app
from infermesh.cli.payments import payments
from infermesh.cli.payouts import payouts_app
from infermesh.cli.serve import serve
from infermesh.cli.worker import worker
from infermesh.cli.workers import workers_app

app = typer.Typer(
    name="infermesh",
    help="infermesh: an open, self-hostable decentralized inference network.",
    no_args_is_help=True,
    add_completion=False,
)
app.command()(serve)
app.command("worker")(worker)
app.command("payments")(payments)
app.add_typer(keys_app, name="keys")
app.add_typer(payouts_app, name="payouts")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(workers_app, name="workers")
app.add_typer(accounts_app, name="accounts")
app.add_typer(credits_app, name="credits")
app.add_typer(limits_app, name="limits")


def main() -> None:
    app()
