"""The dashboard's wallet sign-in and Billing page over real HTTP: a real anvil node with
TestUSDC, a real gateway with payments and a relayer, wallets of eth-account.

A wallet signs the EIP-4361 message the dashboard hands out and gets a session (and no
API key); a message replayed, for another domain or signed by another wallet gets none.
The Billing page shows the account's own deposits and ledger; claiming a transfer and
posting a permit need the session's CSRF token. Without payments the page says so.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from tests.dashboard.test_sessions import CSRF, browser, page_csrf, session_cookie, sign_in
from tests.payments.chain import mine, mint
from tests.payments.test_deposits import fund, send
from tests.payments.test_permits import Relayed, relayed_chain
from tests.support.gateway import RunningGateway, start_gateway
from tests.support.servers import free_port

CONFIRMATIONS = 2
USDC = 1_000_000
pytestmark = pytest.mark.anvil


@pytest.fixture(scope="module")
def chain() -> Iterator[Relayed]:
    with relayed_chain() as relayed:
        yield relayed


def paying_gateway(chain: Relayed, data_dir: Path) -> AbstractContextManager[RunningGateway]:
    """A gateway with USDC payments and a relayer on ``chain``; its wallet sign-in
    messages name its own host and port, as a browser there sees them."""
    port = free_port()
    return start_gateway(
        data_dir,
        specs=[],
        embedded_worker=False,
        port=port,
        wallet_domain=f"127.0.0.1:{port}",
        payments_rpc_url=chain.usdc.anvil.url,
        payments_usdc_address=chain.usdc.token.address,
        payments_treasury=chain.usdc.treasury,
        payments_confirmations=CONFIRMATIONS,
        payments_min_deposit=USDC,
        payments_poll_interval=0.05,
        payments_relayer_key=chain.relayer.key.hex(),
    )


@pytest.fixture(scope="module")
def gateway(chain: Relayed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with paying_gateway(chain, tmp_path_factory.mktemp("dashboard-billing")) as running:
        yield running


@pytest.fixture(scope="module")
def unpaid_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway without payments."""
    with start_gateway(
        tmp_path_factory.mktemp("dashboard-unpaid"), specs=[], embedded_worker=False
    ) as running:
        yield running


# --- helpers ---------------------------------------------------------------------------


def sign(wallet: LocalAccount, message: str) -> str:
    return wallet.sign_message(encode_defunct(text=message)).signature.to_0x_hex()


def wallet_message(client: httpx.Client, wallet: LocalAccount) -> tuple[str, str]:
    """The sign-in page's token, and the message the dashboard hands ``wallet`` to sign."""
    page = client.get("/dashboard/sign-in")
    assert 'id="wallet-sign-in"' in page.text
    match = CSRF.search(page.text)
    assert match is not None
    token = match.group(1)
    answer = client.post(
        "/dashboard/sign-in/wallet/message",
        data={"csrf": token, "address": wallet.address.lower(), "chain_id": "0x2105"},
    )
    assert answer.status_code == 200, answer.text
    message: str = answer.json()["message"]
    return token, message


def post_signed(client: httpx.Client, token: str, message: str, signature: str) -> httpx.Response:
    return client.post(
        "/dashboard/sign-in/wallet",
        data={"csrf": token, "message": message, "signature": signature},
    )


def wallet_sign_in(client: httpx.Client, wallet: LocalAccount) -> httpx.Response:
    """Sign in with ``wallet`` as the sign-in page's script does."""
    token, message = wallet_message(client, wallet)
    answer = post_signed(client, token, message, sign(wallet, message))
    assert answer.status_code == 200, answer.text
    return answer


def assert_no_session(answer: httpx.Response, client: httpx.Client) -> None:
    assert "infermesh_session" not in answer.headers.get("set-cookie", "")
    assert client.get("/dashboard/").headers["location"] == "/dashboard/sign-in"


def payer_signature(wallet: LocalAccount, typed: dict[str, Any]) -> str:
    """``typed`` signed by ``wallet`` as ``eth_signTypedData_v4`` signs it."""
    return wallet.sign_typed_data(full_message=typed).signature.to_0x_hex()


def live(client: httpx.Client) -> str:
    answer = client.get("/dashboard/billing/live")
    assert answer.status_code == 200, answer.text
    return answer.text


def first_status(html: str) -> str | None:
    found = re.search(r'class="badge deposit-status[^"]*">([a-z]+)<', html)
    return found.group(1) if found else None


def until_credited(chain: Relayed, client: httpx.Client) -> str:
    """Mine blocks until the newest deposit is credited (polled, with a deadline); the
    fragment that says so."""
    deadline = time.monotonic() + 20
    while first_status(html := live(client)) != "credited":
        assert time.monotonic() < deadline, html
        mine(chain.usdc.anvil.w3)
        time.sleep(0.05)
    return html


# --- wallet sign-in --------------------------------------------------------------------


def test_a_wallet_signs_in_and_gets_a_session_without_an_api_key(
    gateway: RunningGateway,
) -> None:
    wallet = Account.create()
    with browser(gateway) as client:
        token, message = wallet_message(client, wallet)
        port = gateway.base_url.rsplit(":", 1)[1]
        assert message.startswith(f"127.0.0.1:{port} wants you to sign in")
        assert f"\n{wallet.address}\n" in message and "\nChain ID: 8453\n" in message
        answer = post_signed(client, token, message, sign(wallet, message))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"next": "/dashboard/overview"}
        cookie = session_cookie(answer)
        assert cookie["httponly"] and cookie["samesite"] == "strict"
        assert cookie["path"] == "/dashboard"
        overview = client.get("/dashboard/overview")
        assert overview.status_code == 200
        assert f"wallet-{wallet.address.lower()}" in overview.text
        keys = client.get("/dashboard/keys")
        assert "wallet sign-in" not in keys.text  # no API key was made


def test_the_same_wallet_signs_in_to_the_same_account(gateway: RunningGateway) -> None:
    wallet = Account.create()
    for _ in range(2):
        with browser(gateway) as client:
            wallet_sign_in(client, wallet)
            page = client.get("/dashboard/billing")
            assert f"wallet-{wallet.address.lower()}" in page.text


def test_a_replayed_message_opens_no_session(gateway: RunningGateway) -> None:
    wallet = Account.create()
    with browser(gateway) as client:
        token, message = wallet_message(client, wallet)
        signature = sign(wallet, message)
        assert post_signed(client, token, message, signature).status_code == 200
    with browser(gateway) as other:
        token, _ = wallet_message(other, Account.create())
        replayed = post_signed(other, token, message, signature)
        assert replayed.status_code == 401
        assert "nonce is unknown, used or expired" in replayed.text
        assert_no_session(replayed, other)


def test_a_message_for_another_domain_opens_no_session(gateway: RunningGateway) -> None:
    wallet = Account.create()
    with browser(gateway) as client:
        token, message = wallet_message(client, wallet)
        elsewhere = re.sub(r"^\S+ wants", "evil.example wants", message)
        refused = post_signed(client, token, elsewhere, sign(wallet, elsewhere))
        assert refused.status_code == 401 and "evil.example" in refused.text
        assert_no_session(refused, client)


def test_a_bad_signature_opens_no_session(gateway: RunningGateway) -> None:
    wallet = Account.create()
    with browser(gateway) as client:
        token, message = wallet_message(client, wallet)
        forged = post_signed(client, token, message, sign(Account.create(), message))
        assert forged.status_code == 401
        assert_no_session(forged, client)
        malformed = post_signed(client, token, message, "0x1234")
        assert malformed.status_code == 401
        assert_no_session(malformed, client)
        # The nonce was not used up by the refusals: the wallet's own signature works.
        assert post_signed(client, token, message, sign(wallet, message)).status_code == 200


def test_wallet_sign_in_needs_the_sign_in_pages_token(gateway: RunningGateway) -> None:
    wallet = Account.create()
    with browser(gateway) as client:
        _, message = wallet_message(client, wallet)
        asked = client.post("/dashboard/sign-in/wallet/message", data={"address": wallet.address})
        assert asked.status_code == 403
        forged = post_signed(client, "x" * 32, message, sign(wallet, message))
        assert forged.status_code == 403
        assert_no_session(forged, client)


# --- billing ---------------------------------------------------------------------------


def test_claiming_a_transfer_credits_it_on_this_accounts_page_only(
    chain: Relayed, gateway: RunningGateway
) -> None:
    payer, stranger = Account.create(), Account.create()
    with browser(gateway) as client, browser(gateway) as other:
        wallet_sign_in(client, payer)
        wallet_sign_in(other, stranger)
        page = client.get("/dashboard/billing")
        assert page.status_code == 200
        assert chain.usdc.treasury in page.text and payer.address in page.text
        assert "No deposits yet." in page.text
        fund(chain.usdc, payer.address, 7 * USDC)
        tx_hash = send(chain.usdc, payer.address, chain.usdc.treasury, 7 * USDC)
        without = client.post("/dashboard/billing/claim", data={"tx_hash": tx_hash})
        assert without.status_code == 403
        forged = client.post("/dashboard/billing/claim", data={"tx_hash": tx_hash, "csrf": "x"})
        assert forged.status_code == 403
        claimed = client.post(
            "/dashboard/billing/claim",
            data={"tx_hash": tx_hash, "csrf": page_csrf(client, "/dashboard/billing")},
        )
        assert claimed.status_code == 303
        assert claimed.headers["location"].startswith("/dashboard/billing?notice=Claimed")
        credited = until_credited(chain, client)
        assert tx_hash[:10] in credited and "$7.00" in credited
        assert f"{CONFIRMATIONS} of {CONFIRMATIONS}" in credited
        assert "USDC top-up" in credited and "+$7.00" in credited
        assert 'id="available"' in credited
        theirs = other.get("/dashboard/billing").text
        assert tx_hash[:10] not in theirs and "No deposits yet." in theirs
        assert "No entries yet." in theirs and "USDC top-up" not in theirs


def test_the_page_follows_a_deposit_while_it_is_under_way(
    chain: Relayed, gateway: RunningGateway
) -> None:
    payer = Account.create()
    with browser(gateway) as client:
        wallet_sign_in(client, payer)
        csrf = page_csrf(client, "/dashboard/billing")
        fund(chain.usdc, payer.address, 2 * USDC)
        tx_hash = send(chain.usdc, payer.address, chain.usdc.treasury, 2 * USDC)
        client.post("/dashboard/billing/claim", data={"tx_hash": tx_hash, "csrf": csrf})
        pending = live(client)
        assert "data-pending" in pending and first_status(pending) in ("received", "mined")
        page = client.get("/dashboard/billing").text
        assert 'src="/dashboard/static/billing.js"' in page
        assert 'data-live-url="/dashboard/billing/live"' in page
        done = until_credited(chain, client)
        assert "data-pending" not in done


def test_a_permit_signed_for_the_page_is_relayed_and_credited(
    chain: Relayed, gateway: RunningGateway
) -> None:
    payer = Account.create()
    mint(chain.usdc.token, payer.address, 20 * USDC)
    with browser(gateway) as client:
        wallet_sign_in(client, payer)
        csrf = page_csrf(client, "/dashboard/billing")
        asked = client.get("/dashboard/billing/permit", params={"amount": "3.5"})
        assert asked.status_code == 200, asked.text
        typed = asked.json()
        assert typed["primaryType"] == "Permit"
        assert typed["domain"]["chainId"] == 8453
        assert typed["domain"]["verifyingContract"].lower() == chain.usdc.token.address.lower()
        permit = typed["message"]
        assert permit["owner"] == payer.address.lower() and permit["value"] == 3_500_000
        assert permit["spender"] == chain.relayer.address.lower() and permit["nonce"] == 0
        fields = {
            **{name: str(permit[name]) for name in ("owner", "spender", "value", "nonce")},
            "deadline": str(permit["deadline"]),
        }
        forged = payer_signature(Account.create(), typed)
        refused = client.post(
            "/dashboard/billing/permit",
            data={**fields, "signature": forged},
            headers={"x-csrf-token": csrf},
        )
        assert refused.status_code == 400 and "signature" in refused.text
        signature = payer_signature(payer, typed)
        without = client.post("/dashboard/billing/permit", data={**fields, "signature": signature})
        assert without.status_code == 403
        relayed = client.post(
            "/dashboard/billing/permit",
            data={**fields, "signature": signature},
            headers={"x-csrf-token": csrf},
        )
        assert relayed.status_code == 200, relayed.text
        assert first_status(relayed.text) in ("submitted", "mined")
        assert "data-pending" in relayed.text and "<html" not in relayed.text
        replayed = client.post(
            "/dashboard/billing/permit",
            data={**fields, "signature": signature},
            headers={"x-csrf-token": csrf},
        )
        assert replayed.status_code == 409
        credited = until_credited(chain, client)
        assert "+$3.50" in credited
    assert chain.usdc.token.functions.balanceOf(payer.address).call() == 16_500_000


def test_a_permit_amount_out_of_range_is_refused(gateway: RunningGateway) -> None:
    with browser(gateway) as client:
        wallet_sign_in(client, Account.create())
        for amount in ("0.5", "abc", "1.0000001"):
            answer = client.get("/dashboard/billing/permit", params={"amount": amount})
            assert answer.status_code == 400, amount


def test_an_account_without_a_wallet_is_told_how_to_top_up(gateway: RunningGateway) -> None:
    with browser(gateway) as client:
        sign_in(client, gateway.key)
        page = client.get("/dashboard/billing")
    assert page.status_code == 200
    assert "this account has none" in page.text and 'id="permit-topup"' not in page.text
    assert "Grant" in page.text and "+$100.00" in page.text


def test_without_payments_the_page_says_so(unpaid_gateway: RunningGateway) -> None:
    with browser(unpaid_gateway) as client:
        sign_in(client, unpaid_gateway.key)
        page = client.get("/dashboard/billing")
        assert page.status_code == 200
        assert "USDC top-ups are not enabled on this gateway" in page.text
        assert 'id="billing-deposits"' not in page.text and 'id="claim-topup"' not in page.text
        assert "$100.00" in page.text and "Grant" in page.text
        claim = client.post(
            "/dashboard/billing/claim",
            data={"tx_hash": "0x" + "ab" * 32, "csrf": page_csrf(client, "/dashboard/billing")},
        )
        assert claim.status_code == 503
        assert "wallet.js" not in page.text


def test_the_ledger_is_paged(gateway: RunningGateway) -> None:
    with browser(gateway) as client:
        sign_in(client, gateway.key)
        first = client.get("/dashboard/billing")
        assert 'aria-label="Pages of the ledger"' not in first.text  # one grant only
        bad = client.get("/dashboard/billing", params={"ledger_before": "x"})
        assert bad.status_code == 400
        none = client.get("/dashboard/billing", params={"ledger_before": "1"})
        assert "No older entries." in none.text and "Newest entries" in none.text
