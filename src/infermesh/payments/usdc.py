"""The USDC calls payments make (calldata built here, no contract ABI file), and the
signed messages checked off chain before the relayer spends gas on them: EIP-2612
permits and EIP-3009 transfer authorizations (x402's "exact" scheme)."""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import SignableMessage
from eth_utils.crypto import keccak

from infermesh.payments.chain import Chain, ChainUnavailable
from infermesh.payments.token_domain import TokenDomain

UINT256_MAX = 2**256 - 1
_PERMIT_TYPEHASH = keccak(
    text="Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"
)
_AUTHORIZATION_TYPEHASH = keccak(
    text="TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
    "uint256 validBefore,bytes32 nonce)"
)
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
"""Signatures with ``s`` above this are malleable copies; USDC refuses them too."""


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def calldata(signature: str, types: list[str], values: list[object]) -> str:
    """``0x`` calldata of ``signature`` (e.g. ``"transfer(address,uint256)"``) with ``values``."""
    return "0x" + (_selector(signature) + abi_encode(types, values)).hex()


def transfer_call(to: str, value: int) -> str:
    return calldata("transfer(address,uint256)", ["address", "uint256"], [to, value])


def transfer_from_call(owner: str, to: str, value: int) -> str:
    return calldata(
        "transferFrom(address,address,uint256)",
        ["address", "address", "uint256"],
        [owner, to, value],
    )


@dataclass(frozen=True, slots=True)
class Permit:
    """An EIP-2612 permit as posted: ``owner`` lets ``spender`` move ``value`` base
    units until ``deadline`` (unix seconds), signed (``v``, ``r``, ``s``) for ``nonce``."""

    owner: str
    spender: str
    value: int
    nonce: int
    deadline: int
    v: int
    r: bytes
    s: bytes

    def call(self) -> str:
        """The calldata of ``permit(owner, spender, value, deadline, v, r, s)``."""
        return calldata(
            "permit(address,address,uint256,uint256,uint8,bytes32,bytes32)",
            ["address", "address", "uint256", "uint256", "uint8", "bytes32", "bytes32"],
            [self.owner, self.spender, self.value, self.deadline, self.v, self.r, self.s],
        )

    def signable(self, domain: TokenDomain) -> SignableMessage:
        """What the owner signed: EIP-712's ``0x1901``, the domain separator and the
        permit's struct hash."""
        struct = keccak(
            abi_encode(
                ["bytes32", "address", "address", "uint256", "uint256", "uint256"],
                [_PERMIT_TYPEHASH, self.owner, self.spender, self.value, self.nonce, self.deadline],
            )
        )
        return SignableMessage(b"\x01", bytes.fromhex(domain.separator()[2:]), struct)

    def signer(self, domain: TokenDomain) -> str | None:
        """The address that signed the permit under ``domain`` (lowercase), or None for
        a signature that cannot be valid (a malleable ``s``, a ``v`` not 27 or 28)."""
        return _recover(self.signable(domain), self.v, self.r, self.s)


@dataclass(frozen=True, slots=True)
class Authorization:
    """An EIP-3009 ``TransferWithAuthorization`` as posted: ``sender`` lets anyone move
    ``value`` base units to ``to`` between ``valid_after`` and ``valid_before`` (unix
    seconds, both exclusive), once per random 32-byte ``nonce``; signed (``v``, ``r``,
    ``s``)."""

    sender: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes
    v: int
    r: bytes
    s: bytes

    def call(self) -> str:
        """The calldata of ``transferWithAuthorization(from, to, value, validAfter,
        validBefore, nonce, v, r, s)``."""
        types = ["address", "address", "uint256", "uint256", "uint256", "bytes32"]
        signed = [self.sender, self.to, self.value, self.valid_after, self.valid_before]
        return calldata(
            f"transferWithAuthorization({','.join(types)},uint8,bytes32,bytes32)",
            [*types, "uint8", "bytes32", "bytes32"],
            [*signed, self.nonce, self.v, self.r, self.s],
        )

    def state_call(self) -> str:
        """The calldata of ``authorizationState(from, nonce)`` (true once used or cancelled)."""
        return calldata(
            "authorizationState(address,bytes32)", ["address", "bytes32"], [self.sender, self.nonce]
        )

    def signable(self, domain: TokenDomain) -> SignableMessage:
        """What the payer signed: EIP-712's ``0x1901``, the domain separator and the
        authorization's struct hash."""
        struct = keccak(
            abi_encode(
                ["bytes32", "address", "address", "uint256", "uint256", "uint256", "bytes32"],
                [
                    _AUTHORIZATION_TYPEHASH,
                    self.sender,
                    self.to,
                    self.value,
                    self.valid_after,
                    self.valid_before,
                    self.nonce,
                ],
            )
        )
        return SignableMessage(b"\x01", bytes.fromhex(domain.separator()[2:]), struct)

    def signer(self, domain: TokenDomain) -> str | None:
        """The address that signed the authorization under ``domain`` (lowercase), or
        None for a signature that cannot be valid."""
        return _recover(self.signable(domain), self.v, self.r, self.s)


def _recover(message: SignableMessage, v: int, r: bytes, s: bytes) -> str | None:
    """The signer of ``message`` (lowercase); None for a malleable ``s``, a ``v`` not 27
    or 28, or an ``r`` or ``s`` that is no point on the curve."""
    if v not in (27, 28) or not 0 < int.from_bytes(s, "big") <= SECP256K1_HALF_N:
        return None
    try:
        found: str = Account.recover_message(message, signature=r + s + bytes([v]))
    except Exception:  # an r or s that is no point on the curve
        return None
    return found.lower()


async def read_uint(chain: Chain, token: str, signature: str, owner: str) -> int:
    """A ``uint256`` view of ``token`` taking one address (``nonces``, ``balanceOf``)."""
    found = await chain.call(token, calldata(signature, ["address"], [owner]))
    try:
        (value,) = abi_decode(["uint256"], found)
    except Exception as exc:
        raise ChainUnavailable(f"The token's {signature} answer cannot be read.") from exc
    return int(value)
