"""The USDC calls payments make (calldata built here, no contract ABI file), and the
EIP-2612 permit checked off chain before the relayer spends gas on it."""

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
        if self.v not in (27, 28) or not 0 < int.from_bytes(self.s, "big") <= SECP256K1_HALF_N:
            return None
        signature = self.r + self.s + bytes([self.v])
        try:
            found: str = Account.recover_message(self.signable(domain), signature=signature)
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
