"""What payments read from the chain and send to it, behind one small interface.

:class:`Chain` is the seam; :class:`Web3Chain` is it over JSON-RPC (web3's
``AsyncWeb3`` on an HTTP node). Every failure to reach or read the node is one
:class:`ChainUnavailable`; "not there" (an unknown transaction or block) is ``None``;
a call that reverts is :class:`CallReverted`, a transaction the node refuses is
:class:`TransactionRejected`. Hashes and addresses come out as lowercase ``0x`` hex.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
from eth_typing import HexStr
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import (
    BlockNotFound,
    ContractLogicError,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)

from infermesh.errors import ServiceUnavailable

T = TypeVar("T")


class ChainUnavailable(ServiceUnavailable):
    """The chain's node could not be reached or gave an answer we cannot read."""

    code = "chain_unavailable"


class CallReverted(Exception):
    """The contract reverted the call (or the gas estimate of a transaction)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransactionRejected(Exception):
    """The node refused a raw transaction ("nonce too low", "already known", ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Fees:
    """EIP-1559 fees for a new transaction, in wei per gas."""

    max_fee: int
    priority_fee: int


@dataclass(frozen=True, slots=True)
class Log:
    """One event a transaction emitted: the emitting contract, its topics, its data."""

    log_index: int
    address: str
    topics: tuple[str, ...]
    data: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined transaction: ``succeeded`` is its status, and where it was mined."""

    tx_hash: str
    succeeded: bool
    block_number: int
    block_hash: str
    logs: tuple[Log, ...]


class Chain(Protocol):
    """The few reads the deposit watcher makes. Each raises :class:`ChainUnavailable`
    when the node cannot answer."""

    async def chain_id(self) -> int:
        """The chain's id (8453 on Base)."""
        ...

    async def block_number(self) -> int:
        """The newest block's number."""
        ...

    async def receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt of a mined transaction; None when it is not (or no longer) mined."""
        ...

    async def block_hash(self, number: int) -> str | None:
        """The hash of the block at ``number`` on the chain now; None past the head."""
        ...

    async def call(self, to: str, data: str) -> bytes:
        """What the contract at ``to`` returns for the calldata ``data`` (``eth_call``
        on the newest block); a reverted call is :class:`ChainUnavailable` too."""
        ...

    async def balance(self, address: str) -> int:
        """The address's ether, in wei (what pays the relayer's gas)."""
        ...

    async def nonce(self, address: str, *, pending: bool) -> int:
        """How many transactions ``address`` sent: mined ones, or with ``pending`` also
        those waiting in the node's pool (the next nonce to use)."""
        ...

    async def fees(self) -> Fees:
        """Fees for a transaction sent now: twice the newest base fee plus the tip."""
        ...

    async def estimate_gas(self, sender: str, to: str, data: str) -> int:
        """Gas for ``sender`` calling ``to`` with ``data`` now; :class:`CallReverted`
        if the call would revert."""
        ...

    async def send_raw(self, raw: str) -> None:
        """Broadcast a signed transaction (``0x`` hex); :class:`TransactionRejected` if
        the node refuses it."""
        ...

    async def close(self) -> None:
        """Let go of the connection."""
        ...


def _hex(value: Any) -> str:
    """A hash, address or data blob as lowercase ``0x`` hex."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    text = str(value).lower()
    return text if text.startswith("0x") else "0x" + text


def _reason(exc: Exception) -> str:
    """The node's message for a refusal or a revert, bounded (it is the peer's text)."""
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())[:300]


def _log(raw: Any) -> Log:
    return Log(
        log_index=int(raw["logIndex"]),
        address=_hex(raw["address"]),
        topics=tuple(_hex(topic) for topic in raw["topics"]),
        data=_hex(raw["data"]),
    )


class Web3Chain:
    """:class:`Chain` over a JSON-RPC node at ``rpc_url``, with web3's ``AsyncWeb3``."""

    def __init__(self, rpc_url: str, *, timeout: float = 10.0) -> None:
        provider = AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": timeout})
        self._w3 = AsyncWeb3(provider)

    async def chain_id(self) -> int:
        return int(await self._call(self._w3.eth.chain_id))

    async def block_number(self) -> int:
        return int(await self._call(self._w3.eth.block_number))

    async def receipt(self, tx_hash: str) -> Receipt | None:
        try:
            raw = await self._call(self._w3.eth.get_transaction_receipt(tx_hash))  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        if raw.get("blockNumber") is None:  # some nodes answer pending transactions
            return None
        return Receipt(
            tx_hash=_hex(raw["transactionHash"]),
            succeeded=int(raw["status"]) == 1,
            block_number=int(raw["blockNumber"]),
            block_hash=_hex(raw["blockHash"]),
            logs=tuple(_log(entry) for entry in raw["logs"]),
        )

    async def block_hash(self, number: int) -> str | None:
        try:
            block = await self._call(self._w3.eth.get_block(number))
        except BlockNotFound:
            return None
        found = block.get("hash")
        return None if found is None else _hex(found)

    async def call(self, to: str, data: str) -> bytes:
        address = AsyncWeb3.to_checksum_address(to)
        found = await self._call(self._w3.eth.call({"to": address, "data": data}))  # type: ignore[typeddict-item]
        return bytes(found)

    async def balance(self, address: str) -> int:
        account = AsyncWeb3.to_checksum_address(address)
        return int(await self._call(self._w3.eth.get_balance(account)))

    async def nonce(self, address: str, *, pending: bool) -> int:
        account = AsyncWeb3.to_checksum_address(address)
        count = self._w3.eth.get_transaction_count(account, "pending" if pending else "latest")
        return int(await self._call(count))

    async def fees(self) -> Fees:
        block = await self._call(self._w3.eth.get_block("latest"))
        base = int(block.get("baseFeePerGas") or 0)
        tip = int(await self._call(self._w3.eth.max_priority_fee))
        return Fees(max_fee=2 * base + tip, priority_fee=tip)

    async def estimate_gas(self, sender: str, to: str, data: str) -> int:
        tx = {
            "from": AsyncWeb3.to_checksum_address(sender),
            "to": AsyncWeb3.to_checksum_address(to),
            "data": data,
        }
        try:
            estimate = self._w3.eth.estimate_gas(tx)  # type: ignore[arg-type]
            return int(await self._call(estimate, keep=(ContractLogicError,)))
        except ContractLogicError as exc:
            raise CallReverted(_reason(exc)) from None

    async def send_raw(self, raw: str) -> None:
        try:
            await self._call(self._w3.eth.send_raw_transaction(HexStr(raw)), keep=(Web3RPCError,))
        except Web3RPCError as exc:
            raise TransactionRejected(_reason(exc)) from None

    async def close(self) -> None:
        try:
            await self._w3.provider.disconnect()
        except Exception:  # closing a session that failed to open: nothing to let go of
            return

    async def _call(self, pending: Awaitable[T], *, keep: tuple[type[Exception], ...] = ()) -> T:
        """Await a web3 call; its transport and RPC failures as :class:`ChainUnavailable`
        ("not found" errors, and those in ``keep``, pass through for the caller)."""
        try:
            return await pending
        except (Web3Exception, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            if isinstance(exc, (TransactionNotFound, BlockNotFound, *keep)):
                raise
            raise ChainUnavailable(
                f"The chain's node did not answer: {type(exc).__name__}.",
                retry_after=5,
            ) from exc
