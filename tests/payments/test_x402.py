"""USDC top-ups by x402, end to end: a real anvil node with TestUSDC, a real gateway over
HTTP with x402 on, whose relayer settles EIP-3009 authorizations with
``transferWithAuthorization``, wallets signed in through the API. A top-up without a
payment is answered 402 with x402's requirements; a payment is settled once and credited
after its confirmations; one that is expired, forged, replayed, malformed or not the
caller's sends nothing."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from infermesh.billing.ledger import CreditLedger
from infermesh.config import Settings
from infermesh.errors import ConfigError
from infermesh.payments.setup import build_payments
from infermesh.payments.token_domain import TokenDomain as InfermeshDomain
from infermesh.payments.x402 import MAX_PAYMENT_HEADER, PaymentRefused, parse_payment
from infermesh.store import Database
from tests.payments.chain import (
    Signed,
    TokenDomain,
    mine,
    new_authorization_nonce,
    resign,
    sign_authorization,
    transact,
)
from tests.payments.test_deposits import (
    AMOUNT,
    CONFIRMATIONS,
    MINIMUM,
    User,
    balance,
    ledger_entries,
    payment_settings,
    refused,
    wait_for_status,
)
from tests.payments.test_permits import (
    Relayed,
    relayed_chain,
    relayer_sent,
    relayer_settings,
    sign_in,
    treasury_usdc,
)
from tests.support.gateway import RunningGateway, start_gateway

pytestmark = pytest.mark.anvil

TOPUP = "/v1/credits/topup"
EXACT = "invalid_exact_evm_payload"
EXPIRED = f"{EXACT}_authorization_valid_before"
EARLY = f"{EXACT}_authorization_valid_after"
NETWORK = "base"  # anvil runs with Base's chain id, 8453


@pytest.fixture(scope="module")
def relayed() -> Iterator[Relayed]:
    with relayed_chain() as chain:
        yield chain


@pytest.fixture(scope="module")
def gateway(relayed: Relayed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    settings = {**relayer_settings(relayed), "payments_x402": True}
    with start_gateway(tmp_path_factory.mktemp("x402"), **settings) as running:
        yield running


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with gateway.http() as client:
        yield client


# --- helpers ---------------------------------------------------------------------------


def authorize(
    relayed: Relayed,
    payer: LocalAccount,
    *,
    value: int = AMOUNT,
    to: str | None = None,
    valid_after: int | None = None,
    valid_before: int | None = None,
) -> Signed:
    """A ``TransferWithAuthorization`` by ``payer`` to the treasury, as a wallet signs it."""
    now = int(time.time())
    return sign_authorization(
        payer,
        TokenDomain.of(relayed.usdc.token),
        to=to or relayed.usdc.treasury,
        value=value,
        valid_after=now - 60 if valid_after is None else valid_after,
        valid_before=now + 300 if valid_before is None else valid_before,
        nonce=new_authorization_nonce(),
    )


def payload(signed: Signed, **overrides: Any) -> dict[str, Any]:
    """x402's payment payload carrying ``signed`` (integers as decimal strings)."""
    message = signed.typed_data["message"]
    return {
        "x402Version": 1,
        "scheme": "exact",
        "network": NETWORK,
        "payload": {
            "signature": "0x" + (signed.r + signed.s + bytes([signed.v])).hex(),
            "authorization": {
                "from": message["from"],
                "to": message["to"],
                "value": str(message["value"]),
                "validAfter": str(message["validAfter"]),
                "validBefore": str(message["validBefore"]),
                "nonce": "0x" + message["nonce"].hex(),
            },
        },
        **overrides,
    }


def encode(data: object) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


def pay(
    http: httpx.Client, user: User, header: str | None, *, body: dict[str, Any] | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {user.key}"}
    if header is not None:
        headers["X-PAYMENT"] = header
    return http.post(TOPUP, json={"amount": "5"} if body is None else body, headers=headers)


def settlement_of(response: httpx.Response) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(response.headers["X-PAYMENT-RESPONSE"]))
    return decoded


# --- tests -----------------------------------------------------------------------------


def test_a_topup_without_a_payment_is_answered_with_x402_requirements(
    relayed: Relayed, http: httpx.Client
) -> None:
    user, _ = sign_in(http, relayed.usdc, funds=0)
    response = pay(http, user, None, body={"amount": "5.25"})

    assert response.status_code == 402, response.text
    token = relayed.usdc.token
    assert response.json() == {
        "x402Version": 1,
        "error": "X-PAYMENT header is required",
        "accepts": [
            {
                "scheme": "exact",
                "network": NETWORK,
                "maxAmountRequired": "5250000",
                "resource": f"{http.base_url}{TOPUP}",
                "description": "Top up 5.25 USD of credit on this account",
                "mimeType": "application/json",
                "outputSchema": None,
                "payTo": relayed.usdc.treasury,
                "maxTimeoutSeconds": 300,
                "asset": token.address,
                "extra": {"name": TokenDomain.of(token).name, "version": "2"},
            }
        ],
    }
    by_micro = pay(http, user, None, body={"amount_micro_usd": MINIMUM})
    assert by_micro.status_code == 402
    assert by_micro.json()["accepts"][0]["maxAmountRequired"] == str(MINIMUM)

    assert http.get(TOPUP).json()["x402"] is True
    refused(pay(http, user, None, body={}), 400, "invalid_request")  # no amount
    refused(pay(http, user, None, body={"amount": "0.5"}), 400, "amount_out_of_range")
    refused(pay(http, user, None, body={"amount": "five"}), 400, "invalid_request")
    both = {"amount": "5", "amount_micro_usd": AMOUNT}
    refused(pay(http, user, None, body=both), 400, "invalid_request")
    assert http.post(TOPUP, json={"amount": "5"}).status_code == 401  # a key says whose


def test_a_payment_is_settled_once_and_credited_after_its_confirmations(
    relayed: Relayed, gateway: RunningGateway, http: httpx.Client
) -> None:
    user, wallet = sign_in(http, relayed.usdc)
    before_sent, before_treasury = relayer_sent(relayed), treasury_usdc(relayed)
    header = encode(payload(authorize(relayed, wallet)))

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda _: pay(http, user, header), range(4)))
    accepted = [r for r in responses if r.status_code == 200]
    assert len(accepted) == 1, [r.text for r in responses]
    for response in responses:
        if response.status_code != 200:
            refused(response, 409, "payment_used")
    (deposit,) = accepted[0].json()["data"]
    assert deposit["status"] == "submitted"
    tx_hash = deposit["tx_hash"]
    assert settlement_of(accepted[0]) == {
        "success": True,
        "transaction": tx_hash,
        "network": NETWORK,
        "payer": wallet.address,
    }

    mined = wait_for_status(http, user, tx_hash, "mined")
    assert mined["amount"]["micro_usd"] == AMOUNT
    assert balance(http, user) == 0
    mine(relayed.usdc.anvil.w3, CONFIRMATIONS)
    wait_for_status(http, user, tx_hash, "credited")
    assert balance(http, user) == AMOUNT
    assert relayer_sent(relayed) == before_sent + 1  # one transferWithAuthorization
    assert treasury_usdc(relayed) == before_treasury + AMOUNT
    assert ledger_entries(gateway.settings, tx_hash) == 1

    refused(pay(http, user, header), 409, "payment_used")  # replayed after it was settled
    assert relayer_sent(relayed) == before_sent + 1
    assert balance(http, user) == AMOUNT


def test_payments_that_do_not_qualify_send_nothing(
    relayed: Relayed, gateway: RunningGateway, http: httpx.Client
) -> None:
    user, wallet = sign_in(http, relayed.usdc)
    stranger = Account.create()
    sent = relayer_sent(relayed)
    now = int(time.time())

    def refuses(signed: Signed, code: str, status: int = 400, **overrides: Any) -> None:
        refused(pay(http, user, encode(payload(signed, **overrides))), status, code)

    refuses(authorize(relayed, wallet, valid_before=now - 10), EXPIRED)
    refuses(authorize(relayed, wallet, valid_before=now + 30), EXPIRED)  # too close
    refuses(authorize(relayed, wallet, valid_after=now + 600, valid_before=now + 900), EARLY)
    refuses(authorize(relayed, wallet, to=stranger.address), f"{EXACT}_recipient_mismatch")
    refuses(authorize(relayed, wallet, value=AMOUNT - 1), f"{EXACT}_authorization_value")
    refuses(authorize(relayed, stranger), "payment_payer_mismatch")  # another wallet's
    refuses(authorize(relayed, wallet), "invalid_network", network="base-sepolia")
    refuses(authorize(relayed, wallet), "invalid_scheme", scheme="upto")
    refuses(authorize(relayed, wallet), "invalid_x402_version", x402Version=2)

    genuine = authorize(relayed, wallet)
    refuses(resign(genuine, stranger), f"{EXACT}_signature")  # forged
    raised = payload(genuine)
    raised["payload"]["authorization"]["value"] = str(AMOUNT + 1)
    refused(pay(http, user, encode(raised), body={}), 400, f"{EXACT}_signature")

    poor = authorize(relayed, wallet, value=2 * AMOUNT)  # it holds AMOUNT
    refused(pay(http, user, encode(payload(poor)), body={}), 400, "insufficient_funds")

    for header in (
        "not base64!",
        base64.b64encode(b"not json").decode(),
        encode({"x402Version": 1, "scheme": "exact", "network": NETWORK}),
        encode({**payload(genuine), "payload": {"signature": "0x1234"}}),
        "A" * (MAX_PAYMENT_HEADER + 1),
    ):
        refused(pay(http, user, header), 400, "invalid_payload")
    with_hash = {"amount": "5", "tx_hash": "0x" + "ab" * 32}
    refused(pay(http, user, encode(payload(genuine)), body=with_hash), 400, "invalid_request")
    no_wallet = User("", gateway.key)  # the test key's account has no wallet
    refused(pay(http, no_wallet, encode(payload(genuine))), 403, "no_wallet")

    # Someone else sends the authorization straight to the token first.
    token, w3 = relayed.usdc.token, relayed.usdc.anvil.w3
    use = token.functions.transferWithAuthorization(*genuine.arguments)
    transact(use, sender=w3.eth.accounts[0])
    refuses(genuine, "payment_used", status=409)

    assert relayer_sent(relayed) == sent
    assert balance(http, user) == 0


def test_with_x402_off_a_topup_keeps_its_old_behaviour(relayed: Relayed, tmp_path: Path) -> None:
    with start_gateway(tmp_path, **relayer_settings(relayed)) as off, off.http() as http:
        user, wallet = sign_in(http, relayed.usdc)
        sent = relayer_sent(relayed)
        assert http.get(TOPUP).json()["x402"] is False
        refused(pay(http, user, None), 400, "invalid_request")  # no 402: tx_hash or permit
        header = encode(payload(authorize(relayed, wallet)))
        refused(pay(http, user, header), 503, "x402_disabled")
        assert relayer_sent(relayed) == sent


async def test_x402_needs_the_relayer_key(relayed: Relayed, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, **payment_settings(relayed.usdc), payments_x402=True)
    database = Database.from_settings(settings)
    try:
        with pytest.raises(ConfigError, match="RELAYER_KEY"):
            build_payments(settings, database, CreditLedger(database))
    finally:
        await database.dispose()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("", "not base64"),
        ("%%%%", "not base64"),
        (base64.b64encode(b"[1, 2]").decode(), "payload"),
        (base64.b64encode(b'{"x402Version": 1}').decode(), "scheme"),
    ],
)
def test_malformed_payment_headers_are_refused(header: str, reason: str) -> None:
    with pytest.raises(PaymentRefused, match=reason) as caught:
        parse_payment(header)
    assert caught.value.code == "invalid_payload"


def test_a_payment_header_may_use_base64url_and_hex_integers(relayed: Relayed) -> None:
    signed = authorize(relayed, Account.create())
    data = payload(signed)
    data["payload"]["authorization"]["value"] = hex(AMOUNT)
    header = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    payment = parse_payment(header)
    assert payment.authorization.value == AMOUNT
    assert payment.authorization.sender == signed.typed_data["message"]["from"].lower()
    domain = TokenDomain.of(relayed.usdc.token)
    assert (
        payment.authorization.signer(
            InfermeshDomain(domain.name, domain.version, domain.chain_id, domain.verifying_contract)
        )
        == payment.authorization.sender
    )
