"""The USDC token's EIP-712 domain: the separator computed from the settings, and the
check that the contract on chain has the same one (a wrong name, version, chain or
address would make the gateway credit transfers of a token it does not mean)."""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from infermesh.payments.chain import Chain

DOMAIN_SEPARATOR_CALL = "0x" + keccak(text="DOMAIN_SEPARATOR()")[:4].hex()
"""Calldata of the token's ``DOMAIN_SEPARATOR()`` view."""
_DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


@dataclass(frozen=True, slots=True)
class TokenDomain:
    """The EIP-712 domain a token's signatures are made under."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str

    def separator(self) -> str:
        """``hashStruct(EIP712Domain)`` of these fields, as lowercase ``0x`` hex."""
        encoded = abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                _DOMAIN_TYPEHASH,
                keccak(text=self.name),
                keccak(text=self.version),
                self.chain_id,
                self.verifying_contract,
            ],
        )
        return "0x" + keccak(encoded).hex()


async def domain_mismatch(chain: Chain, domain: TokenDomain) -> str | None:
    """None when the token at ``domain.verifying_contract`` has ``domain``'s separator;
    else what differs. :class:`ChainUnavailable` when the node cannot answer."""
    found = "0x" + (await chain.call(domain.verifying_contract, DOMAIN_SEPARATOR_CALL)).hex()
    expected = domain.separator()
    if found == expected:
        return None
    return (
        f"The USDC contract {domain.verifying_contract} has DOMAIN_SEPARATOR {found}, "
        f"expected {expected} for name {domain.name!r}, version {domain.version!r} on "
        f"chain {domain.chain_id}: check INFERMESH_PAYMENTS_NETWORK, _USDC_ADDRESS, "
        "_USDC_NAME and _USDC_VERSION."
    )
