"""USDC transfers read from a transaction's receipt, and the shapes of hashes and
addresses that deposits are keyed by."""

from __future__ import annotations

import re
from dataclasses import dataclass

from infermesh.errors import InvalidRequest
from infermesh.payments.chain import Receipt

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
"""keccak256("Transfer(address,address,uint256)"): topic 0 of an ERC-20 transfer."""

_TX_HASH = re.compile(r"0x[0-9a-f]{64}")
_ADDRESS = re.compile(r"0x[0-9a-f]{40}")


@dataclass(frozen=True, slots=True)
class Transfer:
    """One ERC-20 ``Transfer`` event: ``amount`` in the token's base units."""

    log_index: int
    sender: str
    recipient: str
    amount: int


def parse_tx_hash(value: str) -> str:
    """A transaction hash as ``0x`` and 64 lowercase hex digits, or :class:`InvalidRequest`."""
    text = value.strip().lower()
    if not _TX_HASH.fullmatch(text):
        raise InvalidRequest(
            "'tx_hash' must be a transaction hash: 0x followed by 64 hex digits.",
            param="tx_hash",
            code="invalid_tx_hash",
        )
    return text


def parse_address(value: str) -> str:
    """An address as ``0x`` and 40 lowercase hex digits; ValueError if it is not one."""
    text = value.strip().lower()
    if not _ADDRESS.fullmatch(text):
        raise ValueError(f"{value!r} is not an address (0x followed by 40 hex digits)")
    return text


def transfers_to(receipt: Receipt, *, token: str, recipient: str) -> list[Transfer]:
    """The ``Transfer`` events that the contract ``token`` emitted in the transaction,
    to ``recipient``; events of other contracts (anyone can emit a "Transfer") are not."""
    found = []
    for log in receipt.logs:
        if log.address != token or len(log.topics) != 3 or log.topics[0] != TRANSFER_TOPIC:
            continue
        to = _topic_address(log.topics[2])
        if to != recipient:
            continue
        amount = int(log.data, 16) if log.data not in ("0x", "") else 0
        found.append(Transfer(log.log_index, _topic_address(log.topics[1]), to, amount))
    return found


def _topic_address(topic: str) -> str:
    return "0x" + topic[-40:]
