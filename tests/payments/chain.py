"""Test support for payments: a USDC-like token on a real EVM, and off-chain signatures.

The token is ``contracts/TestUSDC.sol``, compiled by ``contracts/build.sh`` into
``TestUSDC.json`` next to this file: an ERC-20 with 6 decimals, EIP-2612 ``permit`` and
EIP-3009 authorizations, signed under the EIP-712 domain (name, "2", chainId, address)
as USDC on Base is. It runs on web3's in-process ``EthereumTesterProvider`` or on anvil,
a real JSON-RPC node (npm ``@foundry-rs/anvil``) that :func:`run_anvil` starts on a free
port with Base's chain id, offline. Tests that need anvil call :func:`require_anvil`: a
missing binary FAILS the test (a skip would hide a gap), unless ``INFERMESH_SKIP_ANVIL=1``
is set, which skips it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from web3.types import EventData, RPCEndpoint, TxReceipt

from tests.support.servers import free_port
from tests.support.waiting import wait_until

ARTIFACT = Path(__file__).with_name("TestUSDC.json")
BASE_CHAIN_ID = 8453
TOKEN_VERSION = "2"
MAINNET_NAME = "USD Coin"  # name() of USDC on Base mainnet
SEPOLIA_NAME = "USDC"  # name() of USDC on Base Sepolia
SKIP_ENV = "INFERMESH_SKIP_ANVIL"
ANVIL_PACKAGE = "@foundry-rs/anvil@1.7.1"  # the version .ci/run installs

_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_PERMIT_FIELDS = [
    {"name": "owner", "type": "address"},
    {"name": "spender", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
    {"name": "deadline", "type": "uint256"},
]
_AUTHORIZATION_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
_CANCEL_FIELDS = [
    {"name": "authorizer", "type": "address"},
    {"name": "nonce", "type": "bytes32"},
]


# --- the token -------------------------------------------------------------------------


@cache
def load_artifact() -> dict[str, Any]:
    """The compiled token: ``{"abi": [...], "bytecode": "0x...", "solc": "<version>"}``."""
    artifact: dict[str, Any] = json.loads(ARTIFACT.read_text())
    return artifact


def transact(call: ContractFunction, *, sender: str) -> TxReceipt:
    """Send ``call`` from the node's unlocked account ``sender``; its successful receipt.

    A call that would revert raises (see :func:`reverts`) from gas estimation, and sends
    nothing.
    """
    tx_hash = call.transact({"from": sender})
    receipt = call.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    assert receipt["status"] == 1, f"transaction {tx_hash.hex()} failed: {receipt}"
    return receipt


@contextmanager
def reverts(reason: str) -> Iterator[None]:
    """Expect the block to send a call that reverts with ``reason`` (a regex).

    anvil's revert comes as web3's ``ContractLogicError``; EthereumTesterProvider lets
    eth-tester's ``TransactionFailed`` through. Both read "execution reverted: REASON".
    """
    with pytest.raises((ContractLogicError, TransactionFailed), match=reason):
        yield


def deploy_token(
    w3: Web3, *, name: str = MAINNET_NAME, symbol: str = "USDC", deployer: str | None = None
) -> Contract:
    """Deploy TestUSDC from ``deployer`` (the node's first account if None), its minter."""
    artifact = load_artifact()
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx_hash = factory.constructor(name, symbol).transact({"from": deployer or w3.eth.accounts[0]})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    assert receipt["status"] == 1 and receipt["contractAddress"], receipt
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])


def events(token: Contract, name: str, receipt: TxReceipt) -> list[EventData]:
    """The ``name`` events (e.g. "Transfer") that ``token`` emitted in the transaction."""
    found: list[EventData] = list(token.events[name]().process_receipt(receipt, errors=DISCARD))
    return found


def mint(token: Contract, to: str, value: int) -> TxReceipt:
    """Mint ``value`` base units (6 decimals) to ``to``, sent by the token's minter."""
    return transact(token.functions.mint(to, value), sender=token.functions.minter().call())


# --- EIP-712 signatures ----------------------------------------------------------------


@dataclass(frozen=True)
class TokenDomain:
    """The EIP-712 domain that a token's permits and authorizations are signed under."""

    name: str
    chain_id: int
    verifying_contract: str
    version: str = TOKEN_VERSION

    @classmethod
    def of(cls, token: Contract) -> TokenDomain:
        """The domain of a deployed token, read from the token and its chain."""
        return cls(
            name=token.functions.name().call(),
            chain_id=token.w3.eth.chain_id,
            verifying_contract=token.address,
            version=token.functions.version().call(),
        )

    def separator(self) -> bytes:
        """``hashStruct(EIP712Domain)``, computed here from the fields, as EIP-712 says."""
        return keccak(
            abi_encode(
                ["bytes32", "bytes32", "bytes32", "uint256", "address"],
                [
                    _DOMAIN_TYPEHASH,
                    keccak(text=self.name),
                    keccak(text=self.version),
                    self.chain_id,
                    self.verifying_contract,
                ],
            )
        )

    def typed_data(
        self, primary_type: str, fields: list[dict[str, str]], message: dict[str, Any]
    ) -> dict[str, Any]:
        """The full typed data a wallet signs (``eth_signTypedData_v4``'s argument)."""
        return {
            "types": {"EIP712Domain": _DOMAIN_FIELDS, primary_type: fields},
            "primaryType": primary_type,
            "domain": {
                "name": self.name,
                "version": self.version,
                "chainId": self.chain_id,
                "verifyingContract": self.verifying_contract,
            },
            "message": message,
        }


@dataclass(frozen=True)
class Signed:
    """A signed EIP-712 message and the contract arguments that carry it and its signature."""

    typed_data: dict[str, Any]
    v: int
    r: bytes
    s: bytes
    arguments: tuple[Any, ...]


def _sign(account: LocalAccount, typed_data: dict[str, Any], *fields: Any) -> Signed:
    signed = account.sign_typed_data(full_message=typed_data)
    r, s = signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
    return Signed(typed_data, signed.v, r, s, (*fields, signed.v, r, s))


def resign(signed: Signed, account: LocalAccount) -> Signed:
    """The same message and arguments signed by ``account`` instead (a forgery, unless
    ``account`` is the one named in the message)."""
    return _sign(account, signed.typed_data, *signed.arguments[:-3])


def sign_permit(
    owner: LocalAccount,
    domain: TokenDomain,
    *,
    spender: str,
    value: int,
    nonce: int,
    deadline: int,
) -> Signed:
    """An EIP-2612 permit by ``owner``; ``arguments`` are those of ``permit(...)``."""
    message = {
        "owner": owner.address,
        "spender": spender,
        "value": value,
        "nonce": nonce,
        "deadline": deadline,
    }
    typed_data = domain.typed_data("Permit", _PERMIT_FIELDS, message)
    return _sign(owner, typed_data, owner.address, spender, value, deadline)


def new_authorization_nonce() -> bytes:
    """A random 32-byte EIP-3009 nonce (authorizations are unordered)."""
    return secrets.token_bytes(32)


def sign_authorization(
    payer: LocalAccount,
    domain: TokenDomain,
    *,
    to: str,
    value: int,
    valid_after: int,
    valid_before: int,
    nonce: bytes,
    receive: bool = False,
) -> Signed:
    """An EIP-3009 authorization by ``payer``: ``TransferWithAuthorization``, or with
    ``receive`` ``ReceiveWithAuthorization``; ``arguments`` are those of the function
    of the same name."""
    primary_type = "ReceiveWithAuthorization" if receive else "TransferWithAuthorization"
    message = {
        "from": payer.address,
        "to": to,
        "value": value,
        "validAfter": valid_after,
        "validBefore": valid_before,
        "nonce": nonce,
    }
    typed_data = domain.typed_data(primary_type, _AUTHORIZATION_FIELDS, message)
    return _sign(payer, typed_data, *message.values())


def sign_cancel_authorization(
    authorizer: LocalAccount, domain: TokenDomain, *, nonce: bytes
) -> Signed:
    """An EIP-3009 ``CancelAuthorization``; ``arguments`` are those of ``cancelAuthorization``."""
    message = {"authorizer": authorizer.address, "nonce": nonce}
    typed_data = domain.typed_data("CancelAuthorization", _CANCEL_FIELDS, message)
    return _sign(authorizer, typed_data, authorizer.address, nonce)


# --- anvil -----------------------------------------------------------------------------


def find_anvil() -> str | None:
    """The anvil executable, or None when ``anvil`` is not on PATH.

    npm's ``anvil`` is a node launcher that spawns the platform's binary from a package
    beside it; that binary is returned instead, so that the node is our own child, which
    we stop and reap (an orphaned node would linger until init reaps it).
    """
    found = shutil.which("anvil")
    if found is None:
        return None
    package = Path(found).resolve().parent
    candidates = [
        *package.glob("node_modules/@foundry-rs/anvil-*/bin/anvil"),
        *package.parent.glob("anvil-*/bin/anvil"),
    ]
    native = [path for path in candidates if os.access(path, os.X_OK)]
    return str(native[0]) if native else found


def require_anvil() -> str:
    """Skip if ``INFERMESH_SKIP_ANVIL=1``; else fail unless anvil is on PATH. Its path."""
    if os.environ.get(SKIP_ENV, "") == "1":
        pytest.skip(f"anvil tests skipped: {SKIP_ENV}=1")
    binary = find_anvil()
    if binary is None:
        pytest.fail(
            f"anvil is not on PATH; install it with `npm install -g {ANVIL_PACKAGE}` "
            f"(.ci/run does), or set {SKIP_ENV}=1 to skip these tests explicitly"
        )
    return binary


def _chain_id(url: str) -> int | None:
    """The node's ``eth_chainId``, or None while it does not answer."""
    request = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    try:
        response = httpx.post(url, json=request, timeout=2)
    except httpx.TransportError:
        return None
    return int(response.json()["result"], 16)


@dataclass
class Anvil:
    """A running anvil node: its JSON-RPC URL and a Web3 connected to it."""

    url: str
    w3: Web3
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self, *, timeout: float = 10) -> None:
        """End anvil (its whole process group), politely and then by force."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                if sig == signal.SIGKILL:
                    raise


def _start_anvil(binary: str, chain_id: int, log: IO[bytes]) -> Anvil:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id), "--quiet"]
    # In a session of its own, so that stop() also ends whatever it spawns.
    process = subprocess.Popen(
        [binary, *args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
    return Anvil(url=url, w3=w3, process=process, log=log)


@contextmanager
def run_anvil(
    *, binary: str | None = None, chain_id: int = BASE_CHAIN_ID, startup_timeout: float = 30
) -> Iterator[Anvil]:
    """A fresh anvil node on a free port of 127.0.0.1, answering with ``chain_id``.

    Waits (polling ``eth_chainId`` with a deadline) until it answers, and stops it on
    exit, also when the block raises. Its accounts are anvil's ten unlocked dev accounts.
    """
    with tempfile.TemporaryFile() as log:
        anvil = _start_anvil(binary or find_anvil() or "anvil", chain_id, log)
        try:

            def answers() -> bool:
                if anvil.process.poll() is not None:
                    raise RuntimeError(f"anvil exited early:\n{anvil.output()}")
                return _chain_id(anvil.url) == chain_id

            wait_until(answers, timeout=startup_timeout, what=f"anvil answers on {anvil.url}")
            yield anvil
        finally:
            anvil.stop()


def snapshot(w3: Web3) -> str:
    """``evm_snapshot``: an id that :func:`revert` returns the chain's state to."""
    snapshot_id: str = w3.manager.request_blocking(RPCEndpoint("evm_snapshot"), [])
    return snapshot_id


def revert(w3: Web3, snapshot_id: str) -> None:
    """``evm_revert``: back to the state of ``snapshot_id`` (a reorg, for the chain's readers)."""
    assert w3.manager.request_blocking(RPCEndpoint("evm_revert"), [snapshot_id]) is True


def mine(w3: Web3, blocks: int = 1) -> None:
    """``anvil_mine``: mine ``blocks`` empty blocks (confirmations, for the chain's readers)."""
    w3.manager.request_blocking(RPCEndpoint("anvil_mine"), [hex(blocks)])
