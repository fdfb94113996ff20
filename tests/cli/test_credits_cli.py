"""``infermesh credits``, ``infermesh accounts`` and ``infermesh workers earnings``, run as
the real command line; the paid request behind the earnings goes through real billing."""

from __future__ import annotations

import asyncio
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from infermesh.accounts import AccountService
from infermesh.billing.ledger import CreditLedger
from infermesh.billing.pricing import Pricing
from infermesh.billing.service import BillingService, Charge, Outcome, OutcomeStatus
from infermesh.billing.tiers import TierPolicy
from infermesh.billing.usage import UsageLog
from infermesh.mesh.worker import Operator
from infermesh.protocol.chat import Usage
from infermesh.store import Database
from tests.support.postgres import require_postgres, temporary_postgres_database
from tests.support.processes import infermesh

# 0.001003 per request + 1000 * 0.5/M + 500 * 1.5/M = 1003 + 500 + 750 micro-USD.
PRICING = Pricing(per_request="0.001003", input_per_million="0.5", output_per_million="1.5")
COST = 2253
EARNED = COST * 8_000 // 10_000  # operator_share 0.8, rounded down: 1802


class Cli:
    """The ``infermesh`` command on one database (a data dir or a URL)."""

    def __init__(self, env: dict[str, str], *database: str) -> None:
        self.env = env
        self.database = list(database)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return infermesh(*args, *self.database, env=self.env)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def refused(self, *args: str, message: str) -> str:
        """Run a command that must fail with exit 1 and ``message`` on stderr."""
        result = self.run(*args)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stdout == ""
        assert message in result.stderr and "Traceback" not in result.stderr
        return result.stderr

    def refuse_all(self, cases: list[tuple[list[str], str]]) -> None:
        """:meth:`refused` for each (args, message), two processes at a time."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = [pool.submit(self.refused, *args, message=message) for args, message in cases]
            for run in runs:
                run.result()


@pytest.fixture
def cli(tmp_path: Path, clean_env: dict[str, str]) -> Cli:
    return Cli(clean_env, "--data-dir", str(tmp_path))


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'infermesh.db'}"


def test_grant_then_show(cli: Cli) -> None:
    cli.json("keys", "create", "--account", "bob")
    granted = cli.json("credits", "grant", "bob", "5", "--reason", "welcome")
    assert granted["granted"] == {"micro_usd": 5_000_000, "usd": "5", "credits": 500.0}
    assert granted["balance"]["micro_usd"] == 5_000_000 and granted["reference"] is None
    granted = cli.json("credits", "grant", "bob", "0.25", "--reason", "top-up", "--reference", "i1")
    assert (granted["balance"]["micro_usd"], granted["reference"]) == (5_250_000, "i1")

    shown = cli.json("credits", "show", "bob")
    assert (shown["account"], shown["tier"], shown["model_tiers"]) == ("bob", "free", ["fast"])
    assert shown["balance"] == {"micro_usd": 5_250_000, "usd": "5.25", "credits": 525.0}
    assert shown["held"]["micro_usd"] == 0 and shown["available"]["micro_usd"] == 5_250_000
    assert shown["credit_usd"] == "0.01"
    entries = [
        (entry["kind"], entry["balance_change"], entry["balance_after"], entry["reason"])
        for entry in shown["entries"]
    ]
    assert entries == [
        ("grant", 250_000, 5_250_000, "top-up"),
        ("grant", 5_000_000, 5_000_000, "welcome"),
    ]
    assert shown["entries"][0]["reference"] == "i1"
    assert shown["entries"][1]["reference"].startswith("grant_")
    assert len(cli.json("credits", "show", "bob", "--entries", "1")["entries"]) == 1

    text = cli.run("credits", "grant", "bob", "0.000001", "--reason", "a micro-USD")
    assert text.returncode == 0, text.stderr
    assert "$0.000001" in text.stdout and "0.0001 credits" in text.stdout
    assert "$5.250001" in text.stdout
    table = cli.run("credits", "show", "bob")
    assert table.returncode == 0, table.stderr
    for shown_text in ("bob", "tier free", "$5.250001", "525.0001 credits", "i1", "welcome"):
        assert shown_text in table.stdout


def test_invalid_amounts_are_refused_and_grant_nothing(cli: Cli) -> None:
    cli.json("keys", "create", "--account", "bob")
    refusals = {
        "-5": "cannot be negative",
        "0": "more than 0",
        "0.0000001": "more than 6 decimals",
        "1000001": "above 1000000 USD",
        "five": "not an amount of USD",
        "NaN": "not an amount of USD",
        "": "not an amount of USD",
    }
    grants = [
        (["credits", "grant", "bob", amount, "--reason", "r"], message)
        for amount, message in refusals.items()
    ]
    blank_reason = (["credits", "grant", "bob", "5", "--reason", "  "], "needs a reason")
    cli.refuse_all([*grants, blank_reason])
    shown = cli.json("credits", "show", "bob")
    assert shown["balance"]["micro_usd"] == 0 and shown["entries"] == []


def test_a_duplicate_reference_credits_once(cli: Cli) -> None:
    cli.json("keys", "create", "--account", "bob")
    grant = ("credits", "grant", "bob", "2", "--reason", "invoice 7", "--reference", "inv-7")
    assert cli.json(*grant)["balance"]["micro_usd"] == 2_000_000
    cli.refused(*grant, message="reference 'inv-7' was already recorded")
    shown = cli.json("credits", "show", "bob")
    assert shown["balance"]["micro_usd"] == 2_000_000
    assert [entry["reference"] for entry in shown["entries"]] == ["inv-7"]


def test_an_unknown_account_is_refused(cli: Cli) -> None:
    cli.refused(
        "credits", "grant", "ghost", "5", "--reason", "r", message="No account named 'ghost'"
    )
    cli.refused("credits", "show", "ghost", message="No account named 'ghost'")
    cli.refused("accounts", "tier", "ghost", "pro", message="No account named 'ghost'")
    assert cli.json("keys", "list") == []


def test_tier_change(cli: Cli, tmp_path: Path) -> None:
    cli.json("keys", "create", "--account", "bob")
    changed = cli.json("accounts", "tier", "bob", "standard")
    assert (changed["account"], changed["tier"]) == ("bob", "standard")
    assert changed["model_tiers"] == ["fast", "frontier"]
    shown = cli.json("credits", "show", "bob")
    assert (shown["tier"], shown["model_tiers"]) == ("standard", ["fast", "frontier"])

    text = cli.run("accounts", "tier", "bob", "pro")
    assert (
        text.returncode == 0 and "bob is now in tier pro (may use every model tier)" in text.stdout
    )
    assert asyncio.run(_tier_of(tmp_path, "bob")) == "pro"
    cli.refused("accounts", "tier", "bob", "gold", message="Unknown tier 'gold'")
    assert asyncio.run(_tier_of(tmp_path, "bob")) == "pro"
    shown_text = cli.run("accounts", "show", "bob")
    assert shown_text.returncode == 0 and "tier pro (every model tier)" in shown_text.stdout


async def _tier_of(data_dir: Path, account: str) -> str:
    db = Database(sqlite_url(data_dir))
    try:
        return (await AccountService(db).get_account(account)).tier
    finally:
        await db.dispose()


async def _serve(url: str, *, payer: str, key_id: str, operator: str, worker_id: str) -> None:
    """Settle two requests of ``payer`` served by the worker, as the gateway does: a paid
    one and a failed one (which is neither charged nor counted)."""
    db = Database(url)
    try:
        accounts = AccountService(db)
        payer_id = (await accounts.get_account(payer)).id
        paid_to = Operator(
            worker_id=worker_id, account_id=(await accounts.get_account(operator)).id
        )
        billing = BillingService(CreditLedger(db), UsageLog(db), tiers=TierPolicy())
        statuses: tuple[OutcomeStatus, ...] = ("succeeded", "failed")
        for status in statuses:
            charge_id = f"chatcmpl-{status}"
            available = await billing.ledger.hold(
                payer_id, charge_id, 10_000, ttl=timedelta(minutes=5)
            )
            charge = Charge(
                id=charge_id,
                request_id=f"req-{status}",
                account_id=payer_id,
                key_id=key_id,
                model="tiny",
                pricing=PRICING,
                held=10_000,
                available=available,
            )
            usage = Usage(prompt_tokens=1000, completion_tokens=500, total_tokens=1500)
            outcome = Outcome(status, usage, stream=False, latency_ms=12.0, operator=paid_to)
            await billing.settle(charge, outcome)
    finally:
        await db.dispose()


def test_workers_earnings(cli: Cli, tmp_path: Path) -> None:
    worker = cli.json("workers", "token", "create", "--name", "w1", "--operator", "alice")
    idle = cli.json("workers", "token", "create", "--name", "w2", "--operator", "carol")
    key = cli.json("keys", "create", "--account", "bob")
    cli.json("credits", "grant", "bob", "1", "--reason", "test")
    asyncio.run(
        _serve(
            sqlite_url(tmp_path),
            payer="bob",
            key_id=key["id"],
            operator="alice",
            worker_id=worker["id"],
        )
    )

    rows = {row["name"]: row for row in cli.json("workers", "earnings")}
    assert rows["w1"] == {
        "worker_id": worker["id"],
        "name": "w1",
        "operator": "alice",
        "requests": 1,
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "billed": {"micro_usd": COST, "usd": "0.002253", "credits": 0.2253},
        "earned": {"micro_usd": EARNED, "usd": "0.001802", "credits": 0.1802},
    }
    assert rows["w2"]["worker_id"] == idle["id"] and rows["w2"]["operator"] == "carol"
    assert (rows["w2"]["requests"], rows["w2"]["billed"]["micro_usd"]) == (0, 0)
    only_alice = cli.json("workers", "earnings", "--operator", "alice")
    assert [row["name"] for row in only_alice] == ["w1"]
    assert cli.json("workers", "earnings", "--operator", "nobody") == []

    assert cli.json("credits", "show", "alice")["balance"]["micro_usd"] == EARNED
    bob = cli.json("credits", "show", "bob")
    assert bob["balance"]["micro_usd"] == 1_000_000 - COST and bob["held"]["micro_usd"] == 0

    table = cli.run("workers", "earnings")
    assert table.returncode == 0, table.stderr
    for shown in ("alice", "carol", "w1", worker["id"], "1,000", "$0.002253", "$0.001802"):
        assert shown in table.stdout
    assert table.stdout.count("total") == 2


@pytest.mark.postgres
async def test_grants_on_postgres(clean_env: dict[str, str]) -> None:
    require_postgres()
    async with temporary_postgres_database() as url:
        cli = Cli(clean_env, "--database-url", url)
        await asyncio.to_thread(cli.json, "keys", "create", "--account", "pg")
        grant = ("credits", "grant", "pg", "0.5", "--reason", "r", "--reference", "once")
        assert (await asyncio.to_thread(cli.json, *grant))["balance"]["micro_usd"] == 500_000
        await asyncio.to_thread(cli.refused, *grant, message="already recorded")
        shown = await asyncio.to_thread(cli.json, "credits", "show", "pg")
        assert shown["balance"]["micro_usd"] == 500_000 and len(shown["entries"]) == 1
