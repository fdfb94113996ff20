"""USDC top-up objects: ``POST /v1/credits/topup`` and ``GET /v1/credits/deposits``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from infermesh.protocol.base import WireModel
from infermesh.protocol.credits import Amount


class TopupRequest(WireModel):
    """The hash of a USDC transfer to the treasury, sent from the caller's wallet."""

    tx_hash: str = Field(max_length=100, description="0x followed by 64 hex digits")


class DepositObject(WireModel):
    """One deposit: a USDC transfer found in a posted transaction (``log_index`` is None
    while none is found, or when the transaction failed as a whole)."""

    object: Literal["deposit"] = "deposit"
    id: str
    tx_hash: str
    log_index: int | None
    amount: Amount
    status: str = Field(description="received, mined, credited or failed")
    confirmations: int
    required_confirmations: int
    error: str | None
    created: int
    credited: int | None


class DepositList(WireModel):
    """Deposits, newest transaction first."""

    object: Literal["list"] = "list"
    data: list[DepositObject]
