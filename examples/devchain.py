"""A local USDC for trying top-ups: deploy the test token on a running anvil node.

Deploys ``TestUSDC`` (``contracts/TestUSDC.sol``: 6 decimals, EIP-2612 ``permit``,
EIP-712 name "USD Coin", version "2", as USDC on Base) from anvil's dev account 0,
gives a wallet 1 ETH for gas and some test USDC, and prints the ``export`` lines that
start a gateway against it. The treasury is dev account 1 (its key signs operator
payouts), the relayer of permit top-ups dev account 2. Without ``--to`` the wallet is a
new one, and its private key is printed as ``WALLET_KEY``.

The exports go to stdout and the notes to stderr, so that this works::

    eval "$(python examples/devchain.py)"

anvil's dev accounts and their keys are public: use them on a local node only.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from pathlib import Path

from eth_account import Account
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract
from web3.types import TxParams, TxReceipt

ARTIFACT = Path(__file__).resolve().parent.parent / "tests" / "payments" / "TestUSDC.json"
# anvil's dev accounts 1 and 2 (mnemonic "test test ... junk"), as its startup lists them.
TREASURY_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
RELAYER_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
TOKEN_NAME = "USD Coin"  # the EIP-712 name of USDC on Base, the gateway's default
USDC_UNIT = 10**6


def note(text: str) -> None:
    """A line for the reader, on stderr (stdout is kept for the exports)."""
    print(text, file=sys.stderr, flush=True)


def send(w3: Web3, sender: ChecksumAddress, transaction: TxParams) -> TxReceipt:
    """Send ``transaction`` from ``sender``, one of the node's unlocked accounts, and wait
    for it to be mined; its receipt."""
    tx_hash = w3.eth.send_transaction({**transaction, "from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if receipt["status"] != 1:
        raise SystemExit(f"transaction {tx_hash.to_0x_hex()} failed")
    return receipt


def deploy_token(w3: Web3, deployer: ChecksumAddress) -> Contract:
    """Deploy TestUSDC from ``deployer`` (who may then mint); the contract."""
    artifact = json.loads(ARTIFACT.read_text())
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    transaction = factory.constructor(TOKEN_NAME, "USDC").build_transaction({"from": deployer})
    receipt = send(w3, deployer, transaction)
    address = receipt["contractAddress"]
    if address is None:
        raise SystemExit("the token was not deployed")
    return w3.eth.contract(address=address, abi=artifact["abi"])


def check_dev_accounts(w3: Web3) -> None:
    """Stop unless the node has anvil's default dev accounts (whose keys we print)."""
    unlocked = set(w3.eth.accounts)
    for key in (TREASURY_KEY, RELAYER_KEY):
        if Account.from_key(key).address not in unlocked:
            raise SystemExit("this node does not have anvil's default dev accounts")


def fund_wallet(
    w3: Web3, token: Contract, deployer: ChecksumAddress, to: str | None, usdc: Decimal
) -> tuple[ChecksumAddress, str | None]:
    """Give ``to`` (a new wallet if None) 1 ETH and ``usdc`` test USDC; its address and,
    for a new wallet, its private key."""
    wallet_key = None
    if to:
        wallet = Web3.to_checksum_address(to)
    else:
        created = Account.create()
        wallet, wallet_key = created.address, created.key.to_0x_hex()
    send(w3, deployer, {"to": wallet, "value": Web3.to_wei(1, "ether")})
    value = int(usdc * USDC_UNIT)
    send(w3, deployer, token.functions.mint(wallet, value).build_transaction({"from": deployer}))
    return wallet, wallet_key


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpc-url", default="http://127.0.0.1:8545", help="anvil's JSON-RPC")
    parser.add_argument("--to", help="the wallet to fund (default: a new one)")
    parser.add_argument("--usdc", default="100", help="test USDC to mint to it (default 100)")
    args = parser.parse_args(argv)

    w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
    if not w3.is_connected():
        raise SystemExit(f"no node answers on {args.rpc_url}: start anvil first")
    check_dev_accounts(w3)
    deployer = w3.eth.accounts[0]
    token = deploy_token(w3, deployer)
    note(f"TestUSDC deployed at {token.address} on chain {w3.eth.chain_id}")

    wallet, wallet_key = fund_wallet(w3, token, deployer, args.to, Decimal(args.usdc))
    note(f"wallet {wallet}: 1 ETH and {args.usdc} USDC")

    exports = {
        "INFERMESH_PAYMENTS_RPC_URL": args.rpc_url,
        "INFERMESH_PAYMENTS_CHAIN_ID": str(w3.eth.chain_id),
        "INFERMESH_PAYMENTS_USDC_ADDRESS": token.address,
        "INFERMESH_PAYMENTS_TREASURY": Account.from_key(TREASURY_KEY).address,
        "INFERMESH_PAYMENTS_TREASURY_KEY": TREASURY_KEY,
        "INFERMESH_PAYMENTS_RELAYER_KEY": RELAYER_KEY,
        "INFERMESH_PAYMENTS_CONFIRMATIONS": "2",
        "INFERMESH_PAYMENTS_POLL_INTERVAL": "0.5",
    }
    if wallet_key:
        exports["WALLET_KEY"] = wallet_key
    for name, setting in exports.items():
        print(f"export {name}={setting}")


if __name__ == "__main__":
    main()
