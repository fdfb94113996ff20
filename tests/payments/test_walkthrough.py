"""The README's "Pay with USDC" walkthrough, run as a new user runs it: anvil with a block
a second, ``examples/devchain.py``, ``infermesh serve --no-worker`` with the exports it
printed, then ``examples/usdc_topup.py`` to sign in, top up by hash and by permit. The
scripts run as processes and their output is checked, then the gateway's and the
chain's state."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from web3 import Web3
from web3.types import RPCEndpoint

from tests.payments.chain import load_artifact, require_anvil, run_anvil
from tests.support.processes import RunningProcess, infermesh_command
from tests.support.servers import free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
EXPORT = re.compile(r"^export ([A-Z_]+)=(\S+)$", re.MULTILINE)
USDC = 10**6


def example(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python examples/<script> ARGS`` from the repository root, to its end."""
    done = subprocess.run(
        [sys.executable, f"examples/{script}", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{script} {args} failed:\n{done.stdout}\n{done.stderr}"
    return done


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 (False while nothing listens)."""
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def chain() -> Iterator[str]:
    """``anvil --chain-id 8453 --block-time 1``: its RPC URL."""
    binary = require_anvil()
    with run_anvil(binary=binary) as node:
        node.w3.manager.request_blocking(RPCEndpoint("evm_setIntervalMining"), [1])
        yield node.url


@pytest.fixture
def gateway(chain: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The test token deployed, and a gateway started with the exports printed: its
    URL and those exports."""
    printed = example("devchain.py", "--rpc-url", chain, env={}).stdout
    assert all(EXPORT.fullmatch(line) for line in printed.splitlines()), printed  # for eval
    exports = dict(EXPORT.findall(printed))
    settings = {k: v for k, v in exports.items() if k.startswith("INFERMESH_")}
    port = free_port()
    command = infermesh_command(
        "serve", "--no-worker", "--port", str(port), "--data-dir", str(tmp_path / "data")
    )
    server = RunningProcess(command, env=settings)
    try:
        base_url = f"http://127.0.0.1:{port}"
        server.wait_for_line(f"{base_url}/v1", timeout=60)
        wait_until(lambda: answers(f"{base_url}/health"), timeout=30, what="the gateway answers")
        yield base_url, exports
    finally:
        server.stop()


@pytest.mark.anvil
def test_the_readme_walkthrough_signs_in_and_tops_up_both_ways(
    gateway: tuple[str, dict[str, str]],
) -> None:
    base_url, exports = gateway
    assert set(exports) >= {
        "INFERMESH_PAYMENTS_RPC_URL",
        "INFERMESH_PAYMENTS_USDC_ADDRESS",
        "INFERMESH_PAYMENTS_TREASURY",
        "INFERMESH_PAYMENTS_TREASURY_KEY",
        "INFERMESH_PAYMENTS_RELAYER_KEY",
        "WALLET_KEY",
    }
    wallet = Account.from_key(exports["WALLET_KEY"])
    env = {"WALLET_KEY": exports["WALLET_KEY"], "KEY": ""}
    gateway_arg = ("--gateway", base_url, "--rpc-url", exports["INFERMESH_PAYMENTS_RPC_URL"])

    signed_in = example("usdc_topup.py", "signin", *gateway_arg, env=env)
    account = f"wallet-{wallet.address.lower()}"
    assert f"signed in as {account}" in signed_in.stderr
    assert EXPORT.fullmatch(signed_in.stdout.strip()), signed_in.stdout  # for eval "$(…)"
    env["KEY"] = dict(EXPORT.findall(signed_in.stdout))["KEY"]

    by_hash = example("usdc_topup.py", "hash", "5", *gateway_arg, env=env).stdout
    assert "sent 5 USDC to the treasury" in by_hash
    assert "  credited (2/2 confirmations)" in by_hash
    assert by_hash.rstrip().endswith("balance: 5 USD"), by_hash

    by_permit = example("usdc_topup.py", "permit", "10", *gateway_arg, env=env).stdout
    assert "signed a permit for 10 USDC to the relayer" in by_permit
    assert "  submitted" in by_permit
    assert "  credited (2/2 confirmations)" in by_permit
    assert by_permit.rstrip().endswith("balance: 15 USD"), by_permit

    auth = {"Authorization": f"Bearer {env['KEY']}"}
    with httpx.Client(base_url=base_url, headers=auth, timeout=30) as http:
        deposits = http.get("/v1/credits/deposits").json()["data"]
        balance = http.get("/v1/credits/balance").json()
    assert [(d["status"], d["amount"]["micro_usd"]) for d in deposits] == [
        ("credited", 10 * USDC),
        ("credited", 5 * USDC),
    ]
    assert balance["account"] == account
    assert balance["balance"]["micro_usd"] == 15 * USDC

    w3 = Web3(Web3.HTTPProvider(exports["INFERMESH_PAYMENTS_RPC_URL"]))
    token = w3.eth.contract(
        address=exports["INFERMESH_PAYMENTS_USDC_ADDRESS"], abi=load_artifact()["abi"]
    )
    treasury = exports["INFERMESH_PAYMENTS_TREASURY"]
    assert token.functions.balanceOf(treasury).call() == 15 * USDC
    assert token.functions.balanceOf(wallet.address).call() == 85 * USDC
