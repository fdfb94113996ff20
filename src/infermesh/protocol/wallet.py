"""Wallet sign-in objects: ``GET /v1/auth/wallet/nonce`` and ``POST /v1/auth/wallet``."""

from __future__ import annotations

from typing import Literal

from infermesh.protocol.base import WireModel


class WalletNonceObject(WireModel):
    """A nonce to put in an EIP-4361 message, usable once until ``expires_at`` (Unix
    seconds); the message must name ``domain`` and one of ``chain_ids``. ``uri`` is a
    suggestion for the message's ``URI`` (it is not checked)."""

    object: Literal["wallet_nonce"] = "wallet_nonce"
    nonce: str
    expires_at: int
    domain: str
    chain_ids: list[int]
    uri: str | None = None


class WalletSignInRequest(WireModel):
    """An EIP-4361 message and its EIP-191 signature (``0x`` and 130 hex digits)."""

    message: str
    signature: str


class WalletSignInObject(WireModel):
    """A sign-in that worked: the account (``created`` if this sign-in made it), the
    wallet's checksummed address and a new API key, shown only here."""

    object: Literal["wallet_sign_in"] = "wallet_sign_in"
    account: str
    address: str
    created: bool
    key: str
    key_id: str
