"""Network presets: what each fills, and that explicit settings win."""

from __future__ import annotations

import pytest

from infermesh.config import Settings
from infermesh.payments.networks import BASE, BASE_SEPOLIA, resolve_network
from infermesh.payments.setup import deposit_options

TREASURY = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture(autouse=True)
def no_payments_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NETWORK", "CHAIN_ID", "USDC_ADDRESS", "USDC_NAME", "USDC_VERSION"):
        monkeypatch.delenv(f"INFERMESH_PAYMENTS_{name}", raising=False)


def test_base_fills_the_chain_the_token_and_its_domain() -> None:
    network = resolve_network(Settings(payments_network="base"))
    assert network == BASE
    assert (network.chain_id, network.usdc_name, network.usdc_version) == (8453, "USD Coin", "2")
    assert network.usdc_address == "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"


def test_base_sepolia_names_its_token_usdc() -> None:
    network = resolve_network(Settings(payments_network="base-sepolia"))
    assert network == BASE_SEPOLIA
    assert (network.chain_id, network.usdc_name, network.usdc_version) == (84532, "USDC", "2")
    assert network.usdc_address == "0x036CbD53842c5426634e7929541eC2318f3dCF7e"


def test_custom_defaults_to_base_s_chain_and_names_no_token() -> None:
    network = resolve_network(Settings())
    assert (network.name, network.chain_id, network.usdc_address) == ("custom", 8453, None)
    assert (network.usdc_name, network.usdc_version) == ("USD Coin", "2")


def test_explicit_settings_win_over_the_preset() -> None:
    settings = Settings(
        payments_network="base-sepolia",
        payments_chain_id=31337,
        payments_usdc_address="0x" + "11" * 20,
        payments_usdc_name="Test USD",
        payments_usdc_version="7",
    )
    network = resolve_network(settings)
    assert (network.name, network.chain_id, network.usdc_address) == (
        "base-sepolia",
        31337,
        "0x" + "11" * 20,
    )
    assert (network.usdc_name, network.usdc_version) == ("Test USD", "7")


def test_the_environment_picks_the_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERMESH_PAYMENTS_NETWORK", "base-sepolia")
    monkeypatch.setenv("INFERMESH_PAYMENTS_USDC_VERSION", "3")
    network = resolve_network(Settings())
    assert (network.chain_id, network.usdc_name, network.usdc_version) == (84532, "USDC", "3")


def test_a_preset_with_a_node_and_treasury_turns_payments_on() -> None:
    settings = Settings(
        payments_network="base", payments_rpc_url="http://node", payments_treasury=TREASURY
    )
    assert settings.payments_enabled
    assert not Settings(payments_rpc_url="http://node", payments_treasury=TREASURY).payments_enabled
    options = deposit_options(settings)
    assert options.chain_id == 8453 and options.usdc == str(BASE.usdc_address).lower()
    assert (options.usdc_name, options.usdc_version) == ("USD Coin", "2")
