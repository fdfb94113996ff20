"""Sign in to an infermesh gateway with a wallet and top up its credit with USDC.

    eval "$(python examples/usdc_topup.py signin)"  # a new API key, as $KEY
    python examples/usdc_topup.py hash 5            # send 5 USDC, post the transaction hash
    python examples/usdc_topup.py permit 10         # sign a permit for 10 USDC; the gateway's
                                                    # relayer moves it (no ETH needed)

The wallet's private key comes from ``--wallet-key`` or ``$WALLET_KEY``; the API key of
``hash`` and ``permit`` from ``--api-key`` or ``$KEY`` (without one they sign in first).
Signing in prints ``export KEY=...`` on stdout and a note on stderr.
Both top-ups wait until the deposit is credited, printing its states, then the balance.
Only the gateway's HTTP API and the token's standard functions are used.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import Web3

ERC20_ABI = [
    {
        "name": "transfer",
        "type": "function",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "name": "nonces",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]
PERMIT_TYPES = {
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}
PERMIT_LIFETIME = 3600  # seconds the relayer has to use the permit


def sign_in(http: httpx.Client, wallet: LocalAccount) -> dict[str, Any]:
    """Sign an EIP-4361 message with a fresh nonce and trade it for an API key."""
    nonce = http.get("/v1/auth/wallet/nonce").raise_for_status().json()
    issued_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = (
        f"{nonce['domain']} wants you to sign in with your Ethereum account:\n"
        f"{wallet.address}\n\nSign in to infermesh.\n\n"
        f"URI: {nonce['uri']}\nVersion: 1\nChain ID: {nonce['chain_ids'][0]}\n"
        f"Nonce: {nonce['nonce']}\nIssued At: {issued_at}"
    )
    signature = wallet.sign_message(encode_defunct(text=message)).signature.to_0x_hex()
    answer = http.post("/v1/auth/wallet", json={"message": message, "signature": signature})
    signed_in: dict[str, Any] = answer.raise_for_status().json()
    return signed_in


def pay_by_hash(http: httpx.Client, w3: Web3, wallet: LocalAccount, value: int) -> dict[str, Any]:
    """Send ``value`` base units of USDC to the treasury, then post the transaction's hash."""
    options = http.get("/v1/credits/topup").raise_for_status().json()
    token = w3.eth.contract(address=checksum(options["token"]["address"]), abi=ERC20_ABI)
    treasury = checksum(options["treasury"])
    transfer = token.functions.transfer(treasury, value).build_transaction(
        {"from": wallet.address, "nonce": w3.eth.get_transaction_count(wallet.address)}
    )
    signed = wallet.sign_transaction(transfer)  # type: ignore[arg-type]
    sent = w3.eth.send_raw_transaction(signed.raw_transaction)
    tx_hash = sent.to_0x_hex()
    print(f"sent {usdc(value)} USDC to the treasury {options['treasury']}: {tx_hash}")
    w3.eth.wait_for_transaction_receipt(sent, timeout=120)
    return post_topup(http, {"tx_hash": tx_hash})


def pay_by_permit(http: httpx.Client, w3: Web3, wallet: LocalAccount, value: int) -> dict[str, Any]:
    """Sign an EIP-2612 permit of ``value`` base units for the gateway's relayer; post it."""
    options = http.get("/v1/credits/topup").raise_for_status().json()
    if options["relayer"] is None:
        raise SystemExit("this gateway takes no permits (it has no relayer): use `hash`")
    token = options["token"]
    contract = w3.eth.contract(address=checksum(token["address"]), abi=ERC20_ABI)
    permit = {
        "owner": wallet.address,
        "spender": options["relayer"],
        "value": value,
        "nonce": contract.functions.nonces(wallet.address).call(),
        "deadline": int(time.time()) + PERMIT_LIFETIME,
    }
    domain = {
        "name": token["name"],
        "version": token["version"],
        "chainId": token["chain_id"],
        "verifyingContract": token["address"],
    }
    signed = wallet.sign_typed_data(domain, PERMIT_TYPES, permit)
    print(f"signed a permit for {usdc(value)} USDC to the relayer {options['relayer']}")
    deposit = post_topup(http, {"permit": {**permit, "signature": signed.signature.to_0x_hex()}})
    print(f"the relayer moves it in {deposit['tx_hash']}")
    return deposit


def post_topup(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/credits/topup``; the deposit it started (an error's text if refused)."""
    answer = http.post("/v1/credits/topup", json=body)
    if answer.is_error:
        raise SystemExit(f"top-up refused ({answer.status_code}): {answer.text}")
    deposit: dict[str, Any] = answer.json()["data"][0]
    return deposit


def wait_credited(http: httpx.Client, tx_hash: str, *, timeout: float) -> dict[str, Any]:
    """Poll ``GET /v1/credits/deposits`` until the deposit of ``tx_hash`` is credited."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        deposits = http.get("/v1/credits/deposits").raise_for_status().json()["data"]
        deposit: dict[str, Any] = next(d for d in deposits if d["tx_hash"] == tx_hash)
        state = (deposit["status"], deposit["confirmations"])
        if state != seen:
            seen = state
            print(
                f"  {deposit['status']} "
                f"({deposit['confirmations']}/{deposit['required_confirmations']} confirmations)"
            )
        if deposit["status"] in {"credited", "failed", "expired"}:
            if deposit["status"] != "credited":
                raise SystemExit(f"the deposit {deposit['status']}: {deposit['error']}")
            return deposit
        if time.monotonic() > deadline:
            raise SystemExit(f"not credited within {timeout} s; see GET /v1/credits/deposits")
        time.sleep(0.5)


def checksum(address: str) -> ChecksumAddress:
    """The gateway writes addresses in lower case; web3 takes them checksummed."""
    return Web3.to_checksum_address(address)


def usdc(value: int) -> str:
    """Base units (6 decimals) as USDC."""
    return f"{Decimal(value) / 10**6:f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["signin", "hash", "permit"])
    parser.add_argument("amount", nargs="?", default="5", help="USDC to top up (default 5)")
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--rpc-url",
        default=os.environ.get("INFERMESH_PAYMENTS_RPC_URL", "http://127.0.0.1:8545"),
        help="the chain's JSON-RPC (default $INFERMESH_PAYMENTS_RPC_URL or local anvil)",
    )
    parser.add_argument("--wallet-key", default=os.environ.get("WALLET_KEY"))
    parser.add_argument("--api-key", default=os.environ.get("KEY"))
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for credit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.wallet_key:
        raise SystemExit("give the wallet's private key: --wallet-key or $WALLET_KEY")
    wallet: LocalAccount = Account.from_key(args.wallet_key)
    with httpx.Client(base_url=args.gateway, timeout=30) as http:
        key = args.api_key
        if args.command == "signin" or not key:
            signed_in = sign_in(http, wallet)
            key = signed_in["key"]
            print(f"signed in as {signed_in['account']}", file=sys.stderr, flush=True)
            print(f"export KEY={key}", flush=True)
        if args.command == "signin":
            return
        http.headers["Authorization"] = f"Bearer {key}"
        w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
        value = int(Decimal(args.amount) * 10**6)
        pay = pay_by_hash if args.command == "hash" else pay_by_permit
        deposit = pay(http, w3, wallet, value)
        wait_credited(http, deposit["tx_hash"], timeout=args.timeout)
        balance = http.get("/v1/credits/balance").raise_for_status().json()["balance"]
        print(f"balance: {balance['usd']} USD")


if __name__ == "__main__":
    main()
