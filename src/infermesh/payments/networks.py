"""Network presets for USDC top-ups, and how they fill the payments settings.

A preset names a chain, its USDC contract and the token's EIP-712 domain (name and
version); whatever ``INFERMESH_PAYMENTS_*`` sets explicitly wins over it.
"""

from __future__ import annotations

from dataclasses import dataclass

from infermesh.config import Settings


@dataclass(frozen=True, slots=True)
class Network:
    """Where deposits are made: a chain, its USDC contract (None when the operator must
    name it) and the token's EIP-712 name and version."""

    name: str
    chain_id: int
    usdc_address: str | None
    usdc_name: str
    usdc_version: str


BASE = Network("base", 8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "USD Coin", "2")
BASE_SEPOLIA = Network(
    "base-sepolia", 84532, "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2"
)
CUSTOM = Network("custom", 8453, None, "USD Coin", "2")
PRESETS = {network.name: network for network in (BASE, BASE_SEPOLIA, CUSTOM)}


def resolve_network(settings: Settings) -> Network:
    """The network ``settings`` configure: their preset, with the explicit settings on top."""
    preset = PRESETS[settings.payments_network]
    return Network(
        name=preset.name,
        chain_id=settings.payments_chain_id or preset.chain_id,
        usdc_address=settings.payments_usdc_address or preset.usdc_address,
        usdc_name=settings.payments_usdc_name or preset.usdc_name,
        usdc_version=settings.payments_usdc_version or preset.usdc_version,
    )
