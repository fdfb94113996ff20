"""Operator payouts, end to end: a real anvil node with TestUSDC, a real gateway whose
treasury key signs the transfers, payout wallets bound by a SIWE signature through the
API, and ``infermesh payouts run`` as an operator types it. Each operator is paid its
unpaid earnings once, in one transfer per run, even when runs repeat or the node loses
the transfer; a transfer that can never be mined gives the money back."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlalchemy import func, select
from typer.testing import CliRunner
from web3.types import RPCEndpoint

from infermesh.billing.ledger import CreditLedger
from infermesh.cli import app
from infermesh.config import Settings
from infermesh.store import Account as AccountRow
from infermesh.store import Database, LedgerEntry
from tests.accounts.test_wallet_signin import SIGN_IN_PATH, signed
from tests.payments.chain import deploy_token, mine, mint, require_anvil, run_anvil
from tests.payments.test_deposits import CONFIRMATIONS, Usdc, payment_settings
from tests.support.gateway import RunningGateway, start_gateway
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anvil

ADMIN_KEY = "admin-" + secrets.token_hex(8)
MINIMUM = 10_000_000  # 10 USDC
TREASURY_FUNDS = 1_000_000_000  # 1,000 USDC


@dataclass
class Treasury:
    """anvil with the token, and the treasury (with its key) that pays operators."""

    usdc: Usdc
    account: LocalAccount


@dataclass
class Operator:
    """An operator account (signed in with a wallet) and the wallet it is paid to."""

    name: str
    key: str
    payout_wallet: LocalAccount


@pytest.fixture(scope="module")
def treasury() -> Iterator[Treasury]:
    with run_anvil(binary=require_anvil()) as node:
        account = Account.create()
        node.w3.manager.request_blocking(
            RPCEndpoint("anvil_setBalance"), [account.address, hex(10**18)]
        )
        token = deploy_token(node.w3)
        mint(token, account.address, TREASURY_FUNDS)
        yield Treasury(Usdc(node, token, account.address), account)


def treasury_settings(treasury: Treasury) -> dict[str, Any]:
    return {
        **payment_settings(treasury.usdc),
        "payments_treasury_key": treasury.account.key.hex(),
        "payments_payout_minimum": MINIMUM,
        "admin_key": ADMIN_KEY,
    }


@pytest.fixture(scope="module")
def gateway(
    treasury: Treasury, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    data_dir = tmp_path_factory.mktemp("payouts")
    with start_gateway(data_dir, **treasury_settings(treasury)) as running:
        yield running


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with gateway.http() as client:
        yield client


# --- helpers ---------------------------------------------------------------------------


def operator(http: httpx.Client) -> Operator:
    """A new operator: signed in with one wallet, paid to another (bound by signing)."""
    wallet, payout_wallet = Account.create(), Account.create()
    response = http.post(SIGN_IN_PATH, json=signed(http, wallet))
    assert response.status_code == 200, response.text
    name, key = response.json()["account"], response.json()["key"]
    bound = http.post(
        "/v1/payouts/wallet",
        json=signed(http, payout_wallet),
        headers={"Authorization": f"Bearer {key}"},
    )
    assert bound.status_code == 200, bound.text
    assert bound.json()["payout_wallet"] == payout_wallet.address.lower()
    return Operator(name, key, payout_wallet)


def earn(settings: Settings, account: str, amount: int) -> None:
    """Record ``amount`` of earnings for ``account`` in the gateway's ledger (what a
    request its worker served credits)."""

    async def credit() -> None:
        database = Database(settings.resolved_database_url)
        try:
            async with database.session(read_only=True) as session:
                account_id = await session.scalar(
                    select(AccountRow.id).where(AccountRow.name == account)
                )
            assert account_id is not None
            await CreditLedger(database).credit(
                account_id,
                amount,
                kind="earning",
                reference=f"req_{secrets.token_hex(8)}",
                reason=None,
            )
        finally:
            await database.dispose()

    asyncio.run(credit())


def payout_entries(settings: Settings, account: str) -> list[tuple[str, int]]:
    """The account's payout and refund entries: (kind, balance change)."""

    async def read() -> list[tuple[str, int]]:
        database = Database(settings.resolved_database_url)
        try:
            async with database.session(read_only=True) as session:
                rows = await session.execute(
                    select(LedgerEntry.kind, LedgerEntry.balance_change)
                    .join(AccountRow, AccountRow.id == LedgerEntry.account_id)
                    .where(
                        AccountRow.name == account,
                        LedgerEntry.kind.in_(("payout", "payout_refund")),
                    )
                    .order_by(LedgerEntry.id)
                )
                return [(kind, int(change)) for kind, change in rows.all()]
        finally:
            await database.dispose()

    return asyncio.run(read())


def earnings(http: httpx.Client, who: Operator) -> dict[str, Any]:
    response = http.get("/v1/payouts", headers={"Authorization": f"Bearer {who.key}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def run_api(http: httpx.Client) -> dict[str, Any]:
    response = http.post("/admin/payouts/run", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def run_cli(gateway: RunningGateway, treasury: Treasury) -> dict[str, Any]:
    """``infermesh payouts run --json`` against the gateway's database and chain."""
    env = {
        f"INFERMESH_{name.upper()}": str(value)
        for name, value in treasury_settings(treasury).items()
        if name.startswith("payments_")
    }
    result = CliRunner().invoke(
        app,
        ["payouts", "run", "--json", "--data-dir", str(gateway.settings.data_dir)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def usdc_of(treasury: Treasury, address: str) -> int:
    held: int = treasury.usdc.token.functions.balanceOf(address).call()
    return held


def treasury_sent(treasury: Treasury) -> int:
    w3 = treasury.usdc.anvil.w3
    return w3.eth.get_transaction_count(treasury.account.address, "pending")


def wait_for_payout(http: httpx.Client, who: Operator, status: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def reached() -> bool:
        found[:] = earnings(http, who)["payouts"]
        return bool(found) and found[0]["status"] == status

    wait_until(reached, timeout=30, what=f"the payout {status}: {found}")
    return found[0]


def skipped_reason(report: dict[str, Any], who: Operator) -> str | None:
    reasons = [item["reason"] for item in report["skipped"] if item["account"] == who.name]
    return reasons[0] if reasons else None


# --- tests -----------------------------------------------------------------------------


def test_an_operator_is_paid_its_earnings_once(
    treasury: Treasury, gateway: RunningGateway, http: httpx.Client
) -> None:
    who = operator(http)
    earn(gateway.settings, who.name, 12_000_000)
    earn(gateway.settings, who.name, 3_500_000)
    view = earnings(http, who)
    assert view["earned"]["micro_usd"] == 15_500_000
    assert view["unpaid"]["micro_usd"] == view["payable"]["micro_usd"] == 15_500_000
    sent_before = treasury_sent(treasury)

    first = run_api(http)
    (payout,) = [p for p in first["sent"] if p["account"] == who.name]
    assert payout["amount"]["micro_usd"] == 15_500_000
    assert payout["address"] == who.payout_wallet.address.lower()
    again = run_cli(gateway, treasury)  # at once, from the command line: nothing new
    assert not [p for p in again["sent"] if p["account"] == who.name]
    assert "not final" in (skipped_reason(again, who) or "")
    view = earnings(http, who)
    assert view["pending"]["micro_usd"] == 15_500_000 and view["unpaid"]["micro_usd"] == 0

    mine(treasury.usdc.anvil.w3, CONFIRMATIONS)
    paid = wait_for_payout(http, who, "paid")
    assert paid["tx_hash"] == payout["tx_hash"] and paid["paid"] is not None
    assert usdc_of(treasury, who.payout_wallet.address) == 15_500_000
    view = earnings(http, who)
    assert view["paid"]["micro_usd"] == 15_500_000
    assert view["pending"]["micro_usd"] == view["unpaid"]["micro_usd"] == 0

    third = run_cli(gateway, treasury)
    assert not [p for p in third["sent"] if p["account"] == who.name]
    assert treasury_sent(treasury) == sent_before + 1
    assert payout_entries(gateway.settings, who.name) == [("payout", -15_500_000)]


def test_below_the_minimum_nothing_is_sent_until_it_is_reached(
    treasury: Treasury, gateway: RunningGateway, http: httpx.Client
) -> None:
    who = operator(http)
    earn(gateway.settings, who.name, MINIMUM - 1)
    report = run_api(http)
    assert not [p for p in report["sent"] if p["account"] == who.name]
    assert "below the minimum" in (skipped_reason(report, who) or "")
    earn(gateway.settings, who.name, 1)
    report = run_api(http)
    (payout,) = [p for p in report["sent"] if p["account"] == who.name]
    assert payout["amount"]["micro_usd"] == MINIMUM


def test_a_transfer_the_node_lost_is_sent_again_by_the_next_run(
    treasury: Treasury, gateway: RunningGateway, http: httpx.Client
) -> None:
    """A run whose transfer never reached the chain (killed before broadcasting, or
    the node lost it): the next run broadcasts the same stored transfer, not a new one."""
    who = operator(http)
    earn(gateway.settings, who.name, 20_000_000)
    w3 = treasury.usdc.anvil.w3
    w3.manager.request_blocking(RPCEndpoint("evm_setAutomine"), [False])
    try:
        sent_before = treasury_sent(treasury)
        (payout,) = [p for p in run_cli(gateway, treasury)["sent"] if p["account"] == who.name]
        w3.manager.request_blocking(RPCEndpoint("anvil_dropAllTransactions"), [])
        assert treasury_sent(treasury) == sent_before  # as if it was never broadcast
        report = run_cli(gateway, treasury)
        assert not [p for p in report["sent"] if p["account"] == who.name]
        assert treasury_sent(treasury) == sent_before + 1  # the stored one, sent again
        mine(w3, CONFIRMATIONS)
    finally:
        w3.manager.request_blocking(RPCEndpoint("evm_setAutomine"), [True])
    paid = wait_for_payout(http, who, "paid")
    assert paid["tx_hash"] == payout["tx_hash"]
    assert usdc_of(treasury, who.payout_wallet.address) == 20_000_000
    assert payout_entries(gateway.settings, who.name) == [("payout", -20_000_000)]


def test_a_transfer_whose_nonce_was_used_elsewhere_is_refunded(
    treasury: Treasury, gateway: RunningGateway, http: httpx.Client
) -> None:
    """The treasury's key sent another transaction with the payout's nonce (used
    outside infermesh): the payout can never be mined, so it fails and the operator's
    balance gets the amount back; the next run pays it anew."""
    who = operator(http)
    earn(gateway.settings, who.name, 11_000_000)
    w3 = treasury.usdc.anvil.w3
    w3.manager.request_blocking(RPCEndpoint("evm_setAutomine"), [False])
    try:
        (payout,) = [p for p in run_api(http)["sent"] if p["account"] == who.name]
        # The payout waits in the pool (the watcher may broadcast it again at any time):
        # a transaction with its nonce and a far higher fee replaces it there.
        nonce = w3.eth.get_transaction_count(treasury.account.address, "latest")
        other = treasury.account.sign_transaction(
            {
                "chainId": w3.eth.chain_id,
                "nonce": nonce,
                "to": treasury.account.address,
                "value": 0,
                "gas": 21_000,
                "maxFeePerGas": 1000 * w3.eth.gas_price + 10**12,
                "maxPriorityFeePerGas": 100 * w3.eth.gas_price + 10**12,
            }
        )
        w3.manager.request_blocking(RPCEndpoint("anvil_dropAllTransactions"), [])
        w3.eth.send_raw_transaction(other.raw_transaction)
        mine(w3, 1)
        assert w3.eth.get_transaction_receipt(other.hash)["status"] == 1
    finally:
        w3.manager.request_blocking(RPCEndpoint("evm_setAutomine"), [True])

    def dropped() -> bool:  # blocks keep coming, as on a live chain
        mine(w3, 1)
        return earnings(http, who)["payouts"][0]["status"] == "failed"

    wait_until(dropped, timeout=30, what="the payout failed as dropped")
    failed = earnings(http, who)["payouts"][0]
    assert failed["id"] == payout["id"] and "dropped" in failed["error"]
    assert usdc_of(treasury, who.payout_wallet.address) == 0
    assert payout_entries(gateway.settings, who.name) == [
        ("payout", -11_000_000),
        ("payout_refund", 11_000_000),
    ]
    assert earnings(http, who)["unpaid"]["micro_usd"] == 11_000_000
    (anew,) = [p for p in run_api(http)["sent"] if p["account"] == who.name]
    assert anew["id"] != payout["id"] and anew["amount"]["micro_usd"] == 11_000_000


def test_binding_a_payout_wallet_needs_that_wallet_s_signature(
    http: httpx.Client, gateway: RunningGateway
) -> None:
    who = operator(http)
    body = signed(http, Account.create())
    body["signature"] = signed(http, Account.create())["signature"]  # someone else's
    response = http.post(
        "/v1/payouts/wallet", json=body, headers={"Authorization": f"Bearer {who.key}"}
    )
    assert response.status_code == 401, response.text
    assert earnings(http, who)["payout_wallet"] == who.payout_wallet.address.lower()
    unauthenticated = http.post("/v1/payouts/wallet", json=signed(http, Account.create()))
    assert unauthenticated.status_code == 401
    no_admin = http.post("/admin/payouts/run", headers={"Authorization": f"Bearer {who.key}"})
    assert no_admin.status_code in (401, 403)


def test_payouts_are_listed_for_the_admin_and_on_the_command_line(
    treasury: Treasury, gateway: RunningGateway, http: httpx.Client
) -> None:
    who = operator(http)
    earn(gateway.settings, who.name, MINIMUM)
    (payout,) = [p for p in run_api(http)["sent"] if p["account"] == who.name]
    listed = http.get("/admin/payouts", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert listed.status_code == 200
    assert payout["id"] in [p["id"] for p in listed.json()["data"]]
    result = CliRunner().invoke(
        app,
        ["payouts", "--json", "--data-dir", str(gateway.settings.data_dir)],
        env={
            f"INFERMESH_{name.upper()}": str(value)
            for name, value in treasury_settings(treasury).items()
            if name.startswith("payments_")
        },
    )
    assert result.exit_code == 0, result.output
    assert payout["id"] in [p["id"] for p in json.loads(result.stdout)["data"]]


def count_payouts(settings: Settings) -> int:
    async def count() -> int:
        database = Database(settings.resolved_database_url)
        try:
            async with database.session(read_only=True) as session:
                return int(
                    await session.scalar(select(func.count()).where(LedgerEntry.kind == "payout"))
                    or 0
                )
        finally:
            await database.dispose()

    return asyncio.run(count())


def test_without_the_treasury_key_payouts_are_refused(treasury: Treasury, tmp_path: Path) -> None:
    settings = {**treasury_settings(treasury)}
    del settings["payments_treasury_key"]
    with start_gateway(tmp_path, **settings) as running, running.http() as http:
        response = http.post("/admin/payouts/run", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "payouts_disabled"
        assert count_payouts(running.settings) == 0


def payout_count(settings: Settings, accounts: list[str]) -> int:
    """How many payouts the ledger holds for these accounts."""

    async def count() -> int:
        database = Database(settings.resolved_database_url)
        try:
            async with database.session(read_only=True) as session:
                found = await session.scalar(
                    select(func.count())
                    .select_from(LedgerEntry)
                    .join(AccountRow, AccountRow.id == LedgerEntry.account_id)
                    .where(LedgerEntry.kind == "payout", AccountRow.name.in_(accounts))
                )
                return int(found or 0)
        finally:
            await database.dispose()

    return asyncio.run(count())


def test_a_payout_run_killed_midway_and_run_again_pays_each_operator_once(
    treasury: Treasury, gateway: RunningGateway, http: httpx.Client
) -> None:
    """``infermesh payouts run`` SIGKILLed after its first payout: the next run pays
    the others, and no operator is paid twice."""
    operators = [operator(http) for _ in range(20)]
    owed = {who.name: MINIMUM + index for index, who in enumerate(operators)}
    for who in operators:
        earn(gateway.settings, who.name, owed[who.name])
    names = list(owed)
    env = {
        **os.environ,
        **{
            f"INFERMESH_{name.upper()}": str(value)
            for name, value in treasury_settings(treasury).items()
            if name.startswith("payments_")
        },
    }
    command = [sys.executable, "-m", "infermesh", "payouts", "run", "--json"]
    command += ["--data-dir", str(gateway.settings.data_dir)]
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) as first:
        wait_until(
            lambda: payout_count(gateway.settings, names) >= 1 or first.poll() is not None,
            timeout=60,
            what="the first payout",
        )
        first.send_signal(signal.SIGKILL)
    paid_by_first = payout_count(gateway.settings, names)
    assert 1 <= paid_by_first < len(names), "the run was not killed midway"

    second = subprocess.run(command, env=env, capture_output=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr.decode()
    sent = {p["account"] for p in json.loads(second.stdout)["sent"]}
    assert len(sent) == len(names) - paid_by_first

    mine(treasury.usdc.anvil.w3, CONFIRMATIONS)
    for who in operators:
        wait_for_payout(http, who, "paid")
        assert usdc_of(treasury, who.payout_wallet.address) == owed[who.name]
        assert payout_entries(gateway.settings, who.name) == [("payout", -owed[who.name])]
