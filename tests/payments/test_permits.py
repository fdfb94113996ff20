"""USDC top-ups by EIP-2612 permit, end to end: a real anvil node with TestUSDC, a real
gateway over HTTP whose relayer sends ``permit`` and ``transferFrom``, wallets signed in
through the API. A permit is relayed once and credited after its confirmations; one
that is expired, forged, replayed or not the caller's sends nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.types import RPCEndpoint

from tests.accounts.test_wallet_signin import SIGN_IN_PATH, signed
from tests.payments.chain import (
    TokenDomain,
    deploy_token,
    mine,
    mint,
    require_anvil,
    resign,
    run_anvil,
    sign_permit,
)
from tests.payments.test_deposits import (
    AMOUNT,
    CONFIRMATIONS,
    MINIMUM,
    Usdc,
    User,
    balance,
    ledger_entries,
    payment_settings,
    refused,
    wait_for_status,
)
from tests.support.gateway import RunningGateway, start_gateway
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anvil


@dataclass
class Relayed:
    """anvil with the token, and the relayer the gateway sends permits with."""

    usdc: Usdc
    relayer: LocalAccount


@contextmanager
def relayed_chain() -> Iterator[Relayed]:
    """anvil with TestUSDC deployed, a treasury, and a relayer with ETH for gas."""
    binary = require_anvil()
    with run_anvil(binary=binary) as node:
        relayer = Account.create()
        node.w3.manager.request_blocking(
            RPCEndpoint("anvil_setBalance"), [relayer.address, hex(10**18)]
        )
        yield Relayed(Usdc(node, deploy_token(node.w3), Account.create().address), relayer)


@pytest.fixture(scope="module")
def relayed() -> Iterator[Relayed]:
    with relayed_chain() as chain:
        yield chain


def relayer_settings(relayed: Relayed) -> dict[str, Any]:
    return {
        **payment_settings(relayed.usdc),
        "payments_relayer_key": relayed.relayer.key.hex(),
    }


@pytest.fixture(scope="module")
def gateway(relayed: Relayed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with start_gateway(tmp_path_factory.mktemp("permits"), **relayer_settings(relayed)) as running:
        yield running


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with gateway.http() as client:
        yield client


# --- helpers ---------------------------------------------------------------------------


def sign_in(http: httpx.Client, usdc: Usdc, *, funds: int = AMOUNT) -> tuple[User, LocalAccount]:
    """A new wallet holding ``funds`` USDC (and no ether), signed in through the API."""
    wallet = Account.create()
    response = http.post(SIGN_IN_PATH, json=signed(http, wallet))
    assert response.status_code == 200, response.text
    if funds:
        mint(usdc.token, wallet.address, funds)
    return User(wallet.address, response.json()["key"]), wallet


def permit(
    relayed: Relayed,
    owner: LocalAccount,
    *,
    value: int = AMOUNT,
    deadline: int | None = None,
    nonce: int | None = None,
    spender: str | None = None,
) -> dict[str, Any]:
    """A permit body signed by ``owner`` for the relayer, as a wallet would make it."""
    token = relayed.usdc.token
    signed_permit = sign_permit(
        owner,
        TokenDomain.of(token),
        spender=spender or relayed.relayer.address,
        value=value,
        nonce=token.functions.nonces(owner.address).call() if nonce is None else nonce,
        deadline=int(time.time()) + 3600 if deadline is None else deadline,
    )
    return as_body(
        signed_permit.typed_data["message"], signed_permit.v, signed_permit.r, signed_permit.s
    )


def as_body(message: dict[str, Any], v: int, r: bytes, s: bytes) -> dict[str, Any]:
    return {
        "owner": message["owner"],
        "spender": message["spender"],
        "value": str(message["value"]),
        "deadline": message["deadline"],
        "nonce": message["nonce"],
        "signature": "0x" + (r + s + bytes([v])).hex(),
    }


def post(http: httpx.Client, user: User, body: dict[str, Any]) -> httpx.Response:
    return http.post(
        "/v1/credits/topup",
        json={"permit": body},
        headers={"Authorization": f"Bearer {user.key}"},
    )


def relayer_sent(relayed: Relayed) -> int:
    """Transactions the relayer sent (mined or waiting)."""
    return relayed.usdc.anvil.w3.eth.get_transaction_count(relayed.relayer.address, "pending")


def treasury_usdc(relayed: Relayed) -> int:
    balance_of: int = relayed.usdc.token.functions.balanceOf(relayed.usdc.treasury).call()
    return balance_of


# --- tests -----------------------------------------------------------------------------


def test_the_topup_options_name_the_relayer_and_the_token_domain(
    relayed: Relayed, http: httpx.Client
) -> None:
    response = http.get("/v1/credits/topup")
    assert response.status_code == 200, response.text
    options = response.json()
    assert options["relayer"] == relayed.relayer.address.lower()
    assert options["treasury"] == relayed.usdc.treasury.lower()
    domain = TokenDomain.of(relayed.usdc.token)
    assert options["token"] == {
        "address": relayed.usdc.token.address.lower(),
        "chain_id": domain.chain_id,
        "name": domain.name,
        "version": domain.version,
        "decimals": 6,
    }
    assert options["confirmations"] == CONFIRMATIONS
    assert options["min_deposit"]["micro_usd"] == MINIMUM


def test_a_permit_is_relayed_once_and_credited_after_its_confirmations(
    relayed: Relayed, gateway: RunningGateway, http: httpx.Client
) -> None:
    user, wallet = sign_in(http, relayed.usdc)
    before_sent, before_treasury = relayer_sent(relayed), treasury_usdc(relayed)
    body = permit(relayed, wallet)

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda _: post(http, user, body), range(4)))
    accepted = [r for r in responses if r.status_code == 200]
    assert len(accepted) == 1, [r.text for r in responses]
    for response in responses:
        if response.status_code != 200:  # the same permit again: in use, or its nonce used
            assert response.json()["error"]["code"] in ("permit_used", "permit_nonce_used")
    (deposit,) = accepted[0].json()["data"]
    assert deposit["status"] == "submitted"
    tx_hash = deposit["tx_hash"]

    mined = wait_for_status(http, user, tx_hash, "mined")
    assert mined["amount"]["micro_usd"] == AMOUNT
    assert balance(http, user) == 0
    mine(relayed.usdc.anvil.w3, CONFIRMATIONS)
    wait_for_status(http, user, tx_hash, "credited")
    assert balance(http, user) == AMOUNT
    assert relayer_sent(relayed) == before_sent + 2  # permit and transferFrom, once
    assert treasury_usdc(relayed) == before_treasury + AMOUNT
    assert ledger_entries(gateway.settings, tx_hash) == 1

    refused(post(http, user, body), 409, "permit_used")  # replayed after it was used
    assert relayer_sent(relayed) == before_sent + 2


def test_permits_that_do_not_qualify_send_nothing(relayed: Relayed, http: httpx.Client) -> None:
    user, wallet = sign_in(http, relayed.usdc)
    stranger = Account.create()
    sent = relayer_sent(relayed)
    now = int(time.time())

    refused(post(http, user, permit(relayed, wallet, deadline=now - 10)), 400, "permit_expired")
    refused(post(http, user, permit(relayed, wallet, deadline=now + 30)), 400, "permit_expired")
    refused(post(http, user, permit(relayed, stranger)), 400, "permit_owner_mismatch")
    refused(
        post(http, user, permit(relayed, wallet, spender=stranger.address)),
        400,
        "permit_spender_mismatch",
    )
    refused(
        post(http, user, permit(relayed, wallet, value=MINIMUM - 1)),
        400,
        "permit_amount_out_of_range",
    )
    refused(post(http, user, permit(relayed, wallet, value=AMOUNT + 1)), 400, "insufficient_usdc")
    refused(post(http, user, permit(relayed, wallet, nonce=5)), 400, "permit_nonce_invalid")

    token = relayed.usdc.token
    genuine = sign_permit(
        wallet,
        TokenDomain.of(token),
        spender=relayed.relayer.address,
        value=AMOUNT,
        nonce=0,
        deadline=now + 3600,
    )
    forged = resign(genuine, stranger)  # the wallet's permit, signed by someone else
    body = as_body(genuine.typed_data["message"], forged.v, forged.r, forged.s)
    refused(post(http, user, body), 400, "permit_signature_invalid")
    raised = as_body(
        {**genuine.typed_data["message"], "value": AMOUNT - 1}, genuine.v, genuine.r, genuine.s
    )
    refused(post(http, user, raised), 400, "permit_signature_invalid")

    malformed = {**permit(relayed, wallet), "signature": "0x1234"}
    response = post(http, user, malformed)
    assert response.status_code == 400 and "error" in response.json()
    both = http.post(
        "/v1/credits/topup",
        json={"tx_hash": "0x" + "ab" * 32, "permit": permit(relayed, wallet)},
        headers={"Authorization": f"Bearer {user.key}"},
    )
    assert both.status_code == 400, both.text
    assert relayer_sent(relayed) == sent
    assert balance(http, user) == 0


def test_a_stored_transaction_the_node_lost_is_broadcast_again_after_a_restart(
    relayed: Relayed, tmp_path: Path
) -> None:
    """The relayer's transactions leave the node's pool (a node restart, or a gateway
    killed before broadcasting): the next gateway on the same database sends the same
    stored bytes again, and the deposit is credited once."""
    w3 = relayed.usdc.anvil.w3
    settings = relayer_settings(relayed)
    with start_gateway(tmp_path, **settings) as first, first.http() as http:
        user, wallet = sign_in(http, relayed.usdc)
    sent = relayer_sent(relayed)
    w3.manager.request_blocking(RPCEndpoint("evm_setAutomine"), [False])
    try:
        with start_gateway(tmp_path, **settings) as first, first.http() as http:
            response = post(http, user, permit(relayed, wallet))
            assert response.status_code == 200, response.text
            tx_hash = response.json()["data"][0]["tx_hash"]
            wait_until(
                lambda: relayer_sent(relayed) == sent + 2, timeout=30, what="both in the pool"
            )
        w3.manager.request_blocking(RPCEndpoint("anvil_dropAllTransactions"), [])
        assert relayer_sent(relayed) == sent  # the node forgot them
        with start_gateway(tmp_path, **settings) as second, second.http() as http:
            wait_until(lambda: relayer_sent(relayed) == sent + 2, timeout=30, what="sent again")
            mine(w3, 1 + CONFIRMATIONS)
            credited = wait_for_status(http, user, tx_hash, "credited")
            assert credited["tx_hash"] == tx_hash  # the same transaction, not a new one
            assert balance(http, user) == AMOUNT
            assert ledger_entries(second.settings, tx_hash) == 1
    finally:
        w3.manager.request_blocking(RPCEndpoint("evm_setAutomine"), [True])
    assert relayer_sent(relayed) == sent + 2


@pytest.mark.postgres
def test_two_gateways_on_one_postgresql_relay_with_distinct_nonces(
    relayed: Relayed, tmp_path: Path
) -> None:
    """Permits posted at once to two gateways sharing one relayer key and one
    PostgreSQL: every transaction gets its own nonce (none replaces another), and each
    top-up is credited once."""
    from tests.support.postgres import postgres_database

    with postgres_database() as database_url:
        settings = {**relayer_settings(relayed), "database_url": database_url}
        with (
            start_gateway(tmp_path / "a", **settings) as first,
            start_gateway(tmp_path / "b", **settings) as second,
            first.http() as http_a,
            second.http() as http_b,
        ):
            users = [sign_in(http_a, relayed.usdc) for _ in range(6)]
            sent = relayer_sent(relayed)
            bodies = [(user, permit(relayed, wallet)) for user, wallet in users]
            clients = [http_a, http_b] * 3

            with ThreadPoolExecutor(max_workers=6) as pool:
                responses = list(
                    pool.map(lambda i: post(clients[i], *bodies[i]), range(len(bodies)))
                )
            for response in responses:
                assert response.status_code == 200, response.text
            hashes = [r.json()["data"][0]["tx_hash"] for r in responses]
            wait_until(
                lambda: relayer_sent(relayed) == sent + 12, timeout=30, what="12 transactions"
            )
            mine(relayed.usdc.anvil.w3, CONFIRMATIONS)
            for (user, _), tx_hash in zip(bodies, hashes, strict=True):
                wait_for_status(http_b, user, tx_hash, "credited")
                assert balance(http_a, user) == AMOUNT
                assert ledger_entries(first.settings, tx_hash) == 1
    assert relayer_sent(relayed) == sent + 12
