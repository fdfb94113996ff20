"""Wallet sign-in over real HTTP on SQLite and PostgreSQL: a nonce, an EIP-4361 message
signed with eth-account, and the key it gets; every refusal with its own code."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from tests.support.gateway import RunningGateway, start_gateway_on
from tests.support.waiting import wait_until

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgresql", marks=pytest.mark.postgres),
]
DOMAIN = "api.infermesh.test"
NONCE_PATH = "/v1/auth/wallet/nonce"
SIGN_IN_PATH = "/v1/auth/wallet"


@pytest.fixture(scope="module", params=BACKENDS)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with start_gateway_on(
        request.param, tmp_path_factory.mktemp("wallets"), specs=[], wallet_domain=DOMAIN
    ) as running:
        yield running


@pytest.fixture(params=BACKENDS)
def small_gateway(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[RunningGateway]:
    """A gateway whose nonces live 2 s, 3 at most outstanding, on the default domain."""
    with start_gateway_on(
        request.param, tmp_path, specs=[], wallet_nonce_ttl=2.0, wallet_max_nonces=3
    ) as running:
        yield running


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with gateway.http() as client:
        yield client


def get_nonce(http: httpx.Client) -> dict[str, Any]:
    response = http.get(NONCE_PATH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def siwe_message(
    wallet: LocalAccount,
    nonce: str,
    *,
    domain: str = DOMAIN,
    chain_id: int = 8453,
    issued_at: datetime | None = None,
    statement: str = "Sign in to infermesh.",
    tail: str = "",
) -> str:
    """An EIP-4361 message, written out as a client would (not with our own code)."""
    issued = (issued_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{domain} wants you to sign in with your Ethereum account:\n"
        f"{wallet.address}\n\n{statement}\n\n"
        f"URI: https://{domain}/v1/auth/wallet\n"
        f"Version: 1\nChain ID: {chain_id}\nNonce: {nonce}\nIssued At: {issued}{tail}"
    )


def sign(wallet: LocalAccount, message: str) -> str:
    return wallet.sign_message(encode_defunct(text=message)).signature.to_0x_hex()


def signed(http: httpx.Client, wallet: LocalAccount, **options: Any) -> dict[str, str]:
    """A fresh nonce, in a message signed by ``wallet``: the body to post."""
    message = siwe_message(wallet, get_nonce(http)["nonce"], **options)
    return {"message": message, "signature": sign(wallet, message)}


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]


def test_the_nonce_names_what_to_sign(http: httpx.Client) -> None:
    before = time.time()
    nonce = get_nonce(http)
    assert nonce["object"] == "wallet_nonce"
    assert re.fullmatch(r"[A-Za-z0-9]{24}", nonce["nonce"])
    assert before + 290 <= nonce["expires_at"] <= time.time() + 301
    assert nonce["domain"] == DOMAIN
    assert nonce["chain_ids"] == [8453, 84532]
    assert nonce["uri"].endswith(SIGN_IN_PATH)
    assert get_nonce(http)["nonce"] != nonce["nonce"]


def test_sign_in_creates_an_account_and_a_working_key(
    gateway: RunningGateway, http: httpx.Client
) -> None:
    wallet = Account.create()
    response = http.post(SIGN_IN_PATH, json=signed(http, wallet))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "wallet_sign_in"
    assert body["account"] == f"wallet-{wallet.address.lower()}"
    assert body["address"] == wallet.address
    assert body["created"] is True
    assert body["key"].startswith("sk-im-") and body["key_id"].startswith("key_")
    balance = http.get("/v1/credits/balance", headers={"Authorization": f"Bearer {body['key']}"})
    assert balance.status_code == 200, balance.text
    assert (balance.json()["account"], balance.json()["tier"]) == (body["account"], "free")
    assert balance.json()["balance"]["micro_usd"] == 0  # no grant
    assert gateway.client(api_key=body["key"]).models.list().data == []


def test_a_second_sign_in_gives_a_new_key_of_the_same_account(http: httpx.Client) -> None:
    wallet = Account.create()
    first = http.post(SIGN_IN_PATH, json=signed(http, wallet)).json()
    second = http.post(SIGN_IN_PATH, json=signed(http, wallet, chain_id=84532)).json()
    assert (second["account"], second["created"]) == (first["account"], False)
    assert (second["key"], second["key_id"]) != (first["key"], first["key_id"])
    for key in (first["key"], second["key"]):
        balance = http.get("/v1/credits/balance", headers={"Authorization": f"Bearer {key}"})
        assert balance.json()["account"] == first["account"]


def test_a_replayed_message_is_refused(http: httpx.Client) -> None:
    body = signed(http, Account.create())
    assert http.post(SIGN_IN_PATH, json=body).status_code == 200
    refused(http.post(SIGN_IN_PATH, json=body), 401, "nonce_invalid")


def test_an_unknown_nonce_is_refused(http: httpx.Client) -> None:
    wallet = Account.create()
    message = siwe_message(wallet, "NeverHandedOut12345678")
    response = http.post(
        SIGN_IN_PATH, json={"message": message, "signature": sign(wallet, message)}
    )
    refused(response, 401, "nonce_invalid")


def test_a_failed_sign_in_does_not_use_up_the_nonce(http: httpx.Client) -> None:
    wallet = Account.create()
    message = siwe_message(wallet, get_nonce(http)["nonce"])
    forged = sign(Account.create(), message)
    refused(
        http.post(SIGN_IN_PATH, json={"message": message, "signature": forged}),
        401,
        "signature_mismatch",
    )
    response = http.post(
        SIGN_IN_PATH, json={"message": message, "signature": sign(wallet, message)}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"domain": "evil.example"}, "wrong_domain"),
        ({"chain_id": 1}, "wrong_chain"),
        ({"issued_at": datetime.now(UTC) - timedelta(hours=1)}, "message_expired"),
        ({"issued_at": datetime.now(UTC) + timedelta(hours=1)}, "message_not_yet_valid"),
        ({"tail": "\nExpiration Time: 2020-01-01T00:00:00Z"}, "message_expired"),
        ({"tail": "\nNot Before: 2999-01-01T00:00:00Z"}, "message_not_yet_valid"),
    ],
    ids=["domain", "chain", "issued-long-ago", "issued-in-future", "expired", "not-before"],
)
def test_messages_that_do_not_fit_are_refused(
    http: httpx.Client, options: dict[str, Any], code: str
) -> None:
    refused(http.post(SIGN_IN_PATH, json=signed(http, Account.create(), **options)), 401, code)


def test_a_signature_by_another_key_is_refused(http: httpx.Client) -> None:
    wallet = Account.create()
    message = siwe_message(wallet, get_nonce(http)["nonce"])
    body = {"message": message, "signature": sign(Account.create(), message)}
    refused(http.post(SIGN_IN_PATH, json=body), 401, "signature_mismatch")


def test_a_tampered_message_is_refused(http: httpx.Client) -> None:
    body = signed(http, Account.create())
    body["message"] = body["message"].replace("Chain ID: 8453", "Chain ID: 84532")
    refused(http.post(SIGN_IN_PATH, json=body), 401, "signature_mismatch")


def test_malformed_and_oversized_messages_and_signatures_are_refused(http: httpx.Client) -> None:
    wallet = Account.create()
    nonce = get_nonce(http)["nonce"]
    garbage = "hello, let me in"
    body = {"message": garbage, "signature": sign(wallet, garbage)}
    refused(http.post(SIGN_IN_PATH, json=body), 401, "invalid_siwe_message")
    lowercase = siwe_message(wallet, nonce).replace(wallet.address, wallet.address.lower())
    body = {"message": lowercase, "signature": sign(wallet, lowercase)}
    refused(http.post(SIGN_IN_PATH, json=body), 401, "invalid_siwe_message")
    resources = "\nResources:" + "".join(f"\n- https://{DOMAIN}/{i:04d}" for i in range(200))
    huge = siwe_message(wallet, nonce, tail=resources)
    body = {"message": huge, "signature": sign(wallet, huge)}
    refused(http.post(SIGN_IN_PATH, json=body), 401, "siwe_message_too_large")
    message = siwe_message(wallet, nonce)
    for signature in ("0x1234", sign(wallet, message)[2:], "0x" + "ff" * 65):
        body = {"message": message, "signature": signature}
        refused(http.post(SIGN_IN_PATH, json=body), 401, "invalid_signature")


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"message": "x"}',
        b'{"signature": "0x00"}',
        b'{"message": 5, "signature": "0x00"}',
        b'{"message": "x", "signature": null}',
    ],
)
def test_a_body_that_is_not_the_expected_json_is_a_400(http: httpx.Client, content: bytes) -> None:
    response = http.post(
        SIGN_IN_PATH, content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_one_message_posted_six_times_at_once_signs_in_once(gateway: RunningGateway) -> None:
    with gateway.http() as http:
        body = signed(http, Account.create())
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post(SIGN_IN_PATH, json=body) for _ in range(6)))
    assert sorted(response.status_code for response in responses) == [200] + [401] * 5
    for loser in (response for response in responses if response.status_code == 401):
        refused(loser, 401, "nonce_invalid")


async def test_two_first_sign_ins_of_one_wallet_at_once_make_one_account(
    gateway: RunningGateway,
) -> None:
    wallet = Account.create()
    with gateway.http() as http:
        bodies = [signed(http, wallet) for _ in range(4)]
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post(SIGN_IN_PATH, json=b) for b in bodies))
        assert [response.status_code for response in responses] == [200] * 4
        results = [response.json() for response in responses]
        assert {result["account"] for result in results} == {f"wallet-{wallet.address.lower()}"}
        assert sorted(result["created"] for result in results) == [False, False, False, True]
        for result in results:
            balance = await client.get(
                "/v1/credits/balance", headers={"Authorization": f"Bearer {result['key']}"}
            )
            assert balance.json()["account"] == results[0]["account"]


def test_an_expired_nonce_is_refused(small_gateway: RunningGateway) -> None:
    wallet = Account.create()
    with small_gateway.http() as http:
        nonce = get_nonce(http)
        assert nonce["domain"] == "127.0.0.1:8000"  # the settings' host and port
        message = siwe_message(wallet, nonce["nonce"], domain=nonce["domain"])
        wait_until(lambda: time.time() > nonce["expires_at"], timeout=10, what="nonce expiry")
        body = {"message": message, "signature": sign(wallet, message)}
        refused(http.post(SIGN_IN_PATH, json=body), 401, "nonce_invalid")


def test_outstanding_nonces_are_capped(small_gateway: RunningGateway) -> None:
    wallet = Account.create()
    with small_gateway.http() as http:
        nonces = [get_nonce(http) for _ in range(3)]
        over = http.get(NONCE_PATH)
        refused(over, 429, "too_many_nonces")
        assert 1 <= int(over.headers["retry-after"]) <= 3
        message = siwe_message(wallet, nonces[0]["nonce"], domain=nonces[0]["domain"])
        signed_in = http.post(
            SIGN_IN_PATH, json={"message": message, "signature": sign(wallet, message)}
        )
        assert signed_in.status_code == 200, signed_in.text
        latest = get_nonce(http)  # a used nonce is no longer outstanding
        refused(http.get(NONCE_PATH), 429, "too_many_nonces")
        wait_until(lambda: time.time() > latest["expires_at"], timeout=10, what="nonce expiry")
        assert http.get(NONCE_PATH).status_code == 200  # expired ones are gone
