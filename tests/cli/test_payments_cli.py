"""``infermesh payments``: with payments off, an unreachable node, and on anvil."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from typer.testing import CliRunner
from web3.types import RPCEndpoint

from infermesh.cli import app
from tests.payments.chain import deploy_token, require_anvil, run_anvil
from tests.payments.test_deposits import (
    AMOUNT,
    Usdc,
    fund,
    payment_settings,
    send,
    sign_in,
    topup,
    wait_for_status,
)
from tests.support.gateway import start_gateway

TREASURY = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture(scope="module")
def usdc() -> Iterator[Usdc]:
    with run_anvil(binary=require_anvil()) as node:
        yield Usdc(node, deploy_token(node.w3), Account.create().address)


def payments_json(data_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["payments", "--json", "--data-dir", str(data_dir)], env=env)
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_with_payments_off_it_shows_the_preset_and_no_deposits(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    view = payments_json(tmp_path, {"INFERMESH_PAYMENTS_NETWORK": "base-sepolia"})
    assert view["enabled"] is False and view["network"] == "base-sepolia"
    assert view["chain_id"] == 84532 and view["usdc_name"] == "USDC"
    assert view["head_block"] is None and view["deposits"] == []
    table = CliRunner().invoke(app, ["payments", "--data-dir", str(tmp_path)])
    assert table.exit_code == 0 and "No deposits." in table.stdout


def test_an_unreachable_node_is_shown_as_such(clean_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        "INFERMESH_PAYMENTS_NETWORK": "base",
        "INFERMESH_PAYMENTS_RPC_URL": "http://127.0.0.1:9",
        "INFERMESH_PAYMENTS_TREASURY": TREASURY,
    }
    view = payments_json(tmp_path, env)
    assert view["enabled"] is True
    assert view["head_block"] == "unreachable" and view["node_chain_id"] == "unreachable"
    table = CliRunner().invoke(app, ["payments", "--data-dir", str(tmp_path)], env=env)
    assert table.exit_code == 0 and "unreachable" in table.stdout


@pytest.mark.anvil
def test_on_anvil_it_shows_the_head_and_a_deposit(
    clean_env: dict[str, str], usdc: Usdc, tmp_path: Path
) -> None:
    settings = payment_settings(usdc)
    with start_gateway(tmp_path, **settings) as running, running.http() as http:
        user = sign_in(http)
        fund(usdc, user.address, AMOUNT)
        tx_hash = send(usdc, user.address, usdc.treasury, AMOUNT)
        assert topup(http, user, tx_hash).status_code == 200
        wait_for_status(http, user, tx_hash, "mined")
    relayer = Account.create()
    usdc.anvil.w3.manager.request_blocking(
        RPCEndpoint("anvil_setBalance"), [relayer.address, hex(3 * 10**17)]
    )
    env = {
        "INFERMESH_PAYMENTS_RPC_URL": usdc.anvil.url,
        "INFERMESH_PAYMENTS_USDC_ADDRESS": usdc.token.address,
        "INFERMESH_PAYMENTS_TREASURY": usdc.treasury,
        "INFERMESH_PAYMENTS_RELAYER_KEY": relayer.key.hex(),
    }
    view = payments_json(tmp_path, env)
    assert view["node_chain_id"] == 8453 and view["domain_matches"] is True
    assert view["relayer"] == relayer.address.lower()
    assert view["relayer_eth_wei"] == 3 * 10**17
    assert view["treasury_usdc_micro"] == usdc.token.functions.balanceOf(usdc.treasury).call()
    assert view["payouts_enabled"] is False
    assert relayer.key.hex() not in json.dumps(view)  # the key itself is never shown
    assert view["head_block"] == usdc.anvil.w3.eth.block_number
    [deposit] = view["deposits"]
    assert deposit["tx_hash"] == tx_hash.lower() and deposit["amount_micro_usd"] == AMOUNT
    assert deposit["status"] == "mined" and deposit["account"].startswith("wallet")
    table = CliRunner().invoke(app, ["payments", "--data-dir", str(tmp_path)], env=env)
    assert table.exit_code == 0 and tx_hash.lower()[:10] in table.stdout
