"""Sign in with a wallet and top up by permit against a local anvil, in a real browser.

The browser's wallet is an injected EIP-1193 provider (``window.ethereum``) backed by a
test private key: a stand-in for a wallet extension. Its ``request`` forwards to Python
(``page.expose_function``), which answers ``eth_requestAccounts``, ``eth_accounts`` and
``eth_chainId`` and signs with eth-account (``personal_sign``: EIP-191;
``eth_signTypedData_v4``: EIP-712), as a wallet does after its user clicks "Sign".
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from playwright.sync_api import Page, expect

from tests.dashboard.browser import Tab
from tests.dashboard.test_wallet_billing import USDC, chain, paying_gateway
from tests.payments.chain import mine, mint
from tests.payments.test_permits import Relayed
from tests.support.gateway import RunningGateway

__all__ = ["chain"]  # the fixture: anvil with the token, for this module too
pytestmark = pytest.mark.anvil

PROVIDER = """
window.ethereum = {
  isInfermeshTestWallet: true,
  async request({ method, params }) {
    const answer = await window.infermeshTestWallet(method, params || []);
    if (answer.error) {
      const error = new Error(answer.error.message);
      error.code = answer.error.code;
      throw error;
    }
    return answer.result;
  },
};
"""

Answer = dict[str, Any]


@pytest.fixture(scope="module")
def gateway(chain: Relayed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with paying_gateway(chain, tmp_path_factory.mktemp("browser-wallet")) as running:
        yield running


def wallet_answers(wallet: LocalAccount, chain_id: int, asked: list[str]) -> Callable[..., Answer]:
    """The Python side of the stand-in wallet: what ``request`` answers (``asked``
    collects the methods called)."""

    def request(method: str, params: list[Any]) -> Answer:
        asked.append(method)
        if method in ("eth_requestAccounts", "eth_accounts"):
            return {"result": [wallet.address]}
        if method == "eth_chainId":
            return {"result": hex(chain_id)}
        if method == "personal_sign":
            data, address = params
            assert address.lower() == wallet.address.lower()
            signable = (
                encode_defunct(hexstr=data) if data.startswith("0x") else encode_defunct(text=data)
            )
            return {"result": wallet.sign_message(signable).signature.to_0x_hex()}
        if method == "eth_signTypedData_v4":
            address, typed_data = params
            assert address.lower() == wallet.address.lower()
            signed = wallet.sign_typed_data(full_message=json.loads(typed_data))
            return {"result": signed.signature.to_0x_hex()}
        return {"error": {"code": 4200, "message": f"The wallet does not support {method}."}}

    return request


def with_wallet(page: Page, wallet: LocalAccount, chain_id: int) -> list[str]:
    """Give ``page`` the stand-in wallet; the methods it is asked, as they come."""
    asked: list[str] = []
    page.expose_function("infermeshTestWallet", wallet_answers(wallet, chain_id, asked))
    page.add_init_script(PROVIDER)
    return asked


def until_credited(page: Page, chain: Relayed) -> None:
    """Mine a block at a time until the page shows the newest deposit credited (the
    page refreshes its list by itself), with a deadline."""
    status = page.locator("#billing-deposits tbody tr").first.locator(".deposit-status")
    deadline = time.monotonic() + 30
    while True:
        mine(chain.usdc.anvil.w3)
        try:
            expect(status).to_have_text("credited", timeout=1_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def test_sign_in_with_a_wallet_and_top_up_by_permit(
    chain: Relayed, gateway: RunningGateway, tab: Tab
) -> None:
    page = tab.page
    wallet = Account.create()
    mint(chain.usdc.token, wallet.address, 50 * USDC)
    asked = with_wallet(page, wallet, chain.usdc.anvil.w3.eth.chain_id)

    page.goto(f"{gateway.base_url}/dashboard/sign-in")
    button = page.get_by_role("button", name="Sign in with a wallet")
    expect(button).to_be_visible()  # wallet.js found window.ethereum
    tab.shoot("sign-in-wallet")
    button.click()
    page.wait_for_url(re.compile(r"/dashboard/overview$"))
    expect(page.locator(".who")).to_have_text(f"wallet-{wallet.address.lower()}")
    assert {"eth_requestAccounts", "personal_sign"} <= set(asked)

    page.get_by_role("link", name="Billing").click()
    expect(page.locator("#balance .value")).to_have_text("$0.00")
    expect(page.locator("#topup")).to_contain_text(wallet.address)
    page.get_by_label("Amount (USDC)").fill("12.5")
    page.get_by_role("button", name="Top up with wallet").click()
    expect(page.locator("#permit-status")).to_contain_text("The relayer sent your 12.5 USDC")
    assert "eth_signTypedData_v4" in asked
    first = page.locator("#billing-deposits tbody tr").first
    expect(first.locator(".deposit-status")).to_have_text(re.compile("submitted|mined|credited"))
    until_credited(page, chain)
    expect(page.locator("#balance .value")).to_have_text("$12.50", timeout=10_000)
    expect(first).to_contain_text("$12.50")
    expect(page.locator("#billing-ledger tbody tr").first).to_contain_text("+$12.50")
    tab.shoot("billing")
    assert chain.usdc.token.functions.balanceOf(wallet.address).call() == 37_500_000
    tab.assert_clean()


def test_without_a_wallet_the_wallet_controls_stay_off(gateway: RunningGateway, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{gateway.base_url}/dashboard/sign-in")
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.get_by_role("button", name="Sign in with a wallet")).to_be_hidden()
    tab.assert_clean()
