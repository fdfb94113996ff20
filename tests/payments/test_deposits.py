"""USDC top-ups by transaction hash, end to end: a real anvil node with TestUSDC, real
gateways over HTTP (SQLite, and two on one PostgreSQL), wallets signed in through the
API. A deposit is credited once, only after its confirmations, and only to the wallet
that sent it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_utils.crypto import keccak
from sqlalchemy import func, select
from web3.contract import Contract
from web3.types import RPCEndpoint

from infermesh.config import Settings
from infermesh.payments.transfers import TRANSFER_TOPIC
from infermesh.store import Database, LedgerEntry
from tests.accounts.test_wallet_signin import DOMAIN, SIGN_IN_PATH, signed
from tests.payments.chain import (
    Anvil,
    deploy_token,
    mine,
    mint,
    require_anvil,
    revert,
    run_anvil,
    snapshot,
    transact,
)
from tests.support.gateway import RunningGateway, start_gateway
from tests.support.waiting import wait_until

CONFIRMATIONS = 3
AMOUNT = 5_000_000  # 5 USDC
MINIMUM = 1_000_000


@dataclass
class Usdc:
    """anvil, the deployed token and the treasury deposits go to."""

    anvil: Anvil
    token: Contract
    treasury: str


@dataclass
class User:
    """A wallet signed in through the API, and the API key it got."""

    address: str
    key: str


@pytest.fixture(scope="module")
def usdc() -> Iterator[Usdc]:
    binary = require_anvil()
    with run_anvil(binary=binary) as node:
        yield Usdc(node, deploy_token(node.w3), Account.create().address)


def payment_settings(usdc: Usdc) -> dict[str, Any]:
    return {
        "specs": [],
        "wallet_domain": DOMAIN,
        "payments_rpc_url": usdc.anvil.url,
        "payments_usdc_address": usdc.token.address,
        "payments_treasury": usdc.treasury,
        "payments_confirmations": CONFIRMATIONS,
        "payments_min_deposit": MINIMUM,
        "payments_poll_interval": 0.05,
    }


@pytest.fixture(scope="module")
def gateway(usdc: Usdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with start_gateway(tmp_path_factory.mktemp("deposits"), **payment_settings(usdc)) as running:
        yield running


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with gateway.http() as client:
        yield client


# --- helpers ---------------------------------------------------------------------------


def sign_in(http: httpx.Client) -> User:
    """A new wallet, signed in through the API (its account is made)."""
    wallet = Account.create()
    response = http.post(SIGN_IN_PATH, json=signed(http, wallet))
    assert response.status_code == 200, response.text
    return User(wallet.address, response.json()["key"])


def fund(usdc: Usdc, address: str, amount: int) -> None:
    """Give ``address`` gas money and ``amount`` USDC, and let the tests send from it."""
    w3 = usdc.anvil.w3
    w3.manager.request_blocking(RPCEndpoint("anvil_setBalance"), [address, hex(10**18)])
    w3.manager.request_blocking(RPCEndpoint("anvil_impersonateAccount"), [address])
    mint(usdc.token, address, amount)


def send(usdc: Usdc, sender: str, to: str, amount: int) -> str:
    """Transfer ``amount`` USDC from ``sender`` to ``to``; the transaction's hash."""
    receipt = transact(usdc.token.functions.transfer(to, amount), sender=sender)
    return receipt["transactionHash"].to_0x_hex()


def topup(http: httpx.Client, user: User, tx_hash: str) -> httpx.Response:
    return http.post(
        "/v1/credits/topup",
        json={"tx_hash": tx_hash},
        headers={"Authorization": f"Bearer {user.key}"},
    )


def deposits_of(http: httpx.Client, user: User, tx_hash: str) -> list[dict[str, Any]]:
    response = http.get("/v1/credits/deposits", headers={"Authorization": f"Bearer {user.key}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    return [deposit for deposit in body["data"] if deposit["tx_hash"] == tx_hash.lower()]


def balance(http: httpx.Client, user: User) -> int:
    response = http.get("/v1/credits/balance", headers={"Authorization": f"Bearer {user.key}"})
    assert response.status_code == 200, response.text
    micro: int = response.json()["balance"]["micro_usd"]
    return micro


def wait_for_status(
    http: httpx.Client, user: User, tx_hash: str, status: str, *, timeout: float = 30
) -> dict[str, Any]:
    """Poll the deposits until the transaction's one deposit has ``status``."""
    found: list[dict[str, Any]] = []

    def reached() -> bool:
        found[:] = deposits_of(http, user, tx_hash)
        return len(found) == 1 and found[0]["status"] == status

    wait_until(reached, timeout=timeout, what=f"{tx_hash} {status}: {found}")
    return found[0]


def ledger_entries(settings: Settings, tx_hash: str) -> int:
    """How many deposit entries the ledger holds for ``tx_hash`` (any log, any account)."""

    async def count() -> int:
        database = Database(settings.resolved_database_url)
        try:
            async with database.session(read_only=True) as session:
                query = select(func.count()).where(
                    LedgerEntry.kind == "deposit",
                    LedgerEntry.reference.like(f"%:{tx_hash.lower()}:%"),
                )
                return int(await session.scalar(query) or 0)
        finally:
            await database.dispose()

    return asyncio.run(count())


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


# --- tests -----------------------------------------------------------------------------


def test_the_transfer_topic_is_the_erc20_event() -> None:
    assert "0x" + keccak(text="Transfer(address,address,uint256)").hex() == TRANSFER_TOPIC


@pytest.mark.anvil
def test_a_deposit_is_credited_once_after_its_confirmations(
    usdc: Usdc, gateway: RunningGateway, http: httpx.Client
) -> None:
    user = sign_in(http)
    fund(usdc, user.address, AMOUNT)
    tx_hash = send(usdc, user.address, usdc.treasury, AMOUNT)

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda _: topup(http, user, tx_hash), range(4)))
    for response in responses:
        assert response.status_code == 200, response.text
        assert [d["tx_hash"] for d in response.json()["data"]] == [tx_hash.lower()]

    mined = wait_for_status(http, user, tx_hash, "mined")
    assert mined["confirmations"] == 1
    assert mined["required_confirmations"] == CONFIRMATIONS
    assert mined["amount"]["micro_usd"] == AMOUNT and mined["amount"]["usd"] == "5"
    assert mined["credited"] is None
    assert balance(http, user) == 0

    mine(usdc.anvil.w3, CONFIRMATIONS - 1)
    credited = wait_for_status(http, user, tx_hash, "credited")
    assert credited["id"] == mined["id"] and credited["log_index"] == mined["log_index"]
    assert credited["credited"] is not None and credited["error"] is None
    assert balance(http, user) == AMOUNT

    again = topup(http, user, tx_hash)
    assert again.status_code == 200 and again.json()["data"][0]["status"] == "credited"
    mine(usdc.anvil.w3, 2)
    refused(topup(http, sign_in(http), tx_hash), 409, "deposit_claimed")
    assert balance(http, user) == AMOUNT
    assert ledger_entries(gateway.settings, tx_hash) == 1


@pytest.mark.anvil
def test_transfers_that_do_not_qualify_fail_and_credit_nothing(
    usdc: Usdc, gateway: RunningGateway, http: httpx.Client
) -> None:
    user = sign_in(http)
    fund(usdc, user.address, 3 * AMOUNT)
    elsewhere = send(usdc, user.address, Account.create().address, AMOUNT)
    too_small = send(usdc, user.address, usdc.treasury, MINIMUM - 1)
    stranger = Account.create().address
    fund(usdc, stranger, AMOUNT)
    not_theirs = send(usdc, stranger, usdc.treasury, AMOUNT)
    for tx_hash in (elsewhere, too_small, not_theirs):
        assert topup(http, user, tx_hash).status_code == 200
    mine(usdc.anvil.w3, CONFIRMATIONS)

    assert "treasury" in wait_for_status(http, user, elsewhere, "failed")["error"]
    assert "minimum" in wait_for_status(http, user, too_small, "failed")["error"]
    assert "wallet" in wait_for_status(http, user, not_theirs, "failed")["error"]
    assert balance(http, user) == 0
    for tx_hash in (elsewhere, too_small, not_theirs):
        assert ledger_entries(gateway.settings, tx_hash) == 0


@pytest.mark.anvil
def test_a_malformed_hash_or_no_key_is_refused(http: httpx.Client) -> None:
    user = sign_in(http)
    refused(topup(http, user, "0x1234"), 400, "invalid_tx_hash")
    refused(
        http.post("/v1/credits/topup", json={"tx_hash": "0x" + "ab" * 32}), 401, "missing_api_key"
    )


@pytest.mark.anvil
def test_a_deposit_reorganized_away_before_its_confirmations_is_not_credited(
    usdc: Usdc, gateway: RunningGateway, http: httpx.Client
) -> None:
    w3 = usdc.anvil.w3
    user = sign_in(http)
    fund(usdc, user.address, AMOUNT)
    before = snapshot(w3)
    tx_hash = send(usdc, user.address, usdc.treasury, AMOUNT)
    assert topup(http, user, tx_hash).status_code == 200
    wait_for_status(http, user, tx_hash, "mined")

    revert(w3, before)
    back = wait_for_status(http, user, tx_hash, "received")
    assert back["confirmations"] == 0
    mine(w3, CONFIRMATIONS + 2)

    # A later deposit credited means the watcher looked again after those blocks.
    other = sign_in(http)
    fund(usdc, other.address, AMOUNT)
    later = send(usdc, other.address, usdc.treasury, AMOUNT)
    assert topup(http, other, later).status_code == 200
    mine(w3, CONFIRMATIONS)
    wait_for_status(http, other, later, "credited")

    assert deposits_of(http, user, tx_hash)[0]["status"] == "received"
    assert balance(http, user) == 0
    assert ledger_entries(gateway.settings, tx_hash) == 0


@pytest.mark.anvil
def test_a_gateway_restarted_midway_credits_once(usdc: Usdc, tmp_path: Path) -> None:
    settings = payment_settings(usdc)
    with start_gateway(tmp_path, **settings) as first, first.http() as http:
        user = sign_in(http)
        fund(usdc, user.address, AMOUNT)
        tx_hash = send(usdc, user.address, usdc.treasury, AMOUNT)
        assert topup(http, user, tx_hash).status_code == 200
        wait_for_status(http, user, tx_hash, "mined")
    mine(usdc.anvil.w3, CONFIRMATIONS)
    with start_gateway(tmp_path, **settings) as second, second.http() as http:
        wait_for_status(http, user, tx_hash, "credited")
        assert balance(http, user) == AMOUNT
        assert ledger_entries(second.settings, tx_hash) == 1


def test_top_ups_answer_503_when_payments_are_off(tmp_path: Path) -> None:
    with start_gateway(tmp_path, specs=[]) as running, running.http() as http:
        headers = running.auth()
        refused(
            http.post("/v1/credits/topup", json={"tx_hash": "0x" + "ab" * 32}, headers=headers),
            503,
            "payments_disabled",
        )
        refused(http.get("/v1/credits/deposits", headers=headers), 503, "payments_disabled")


@pytest.mark.anvil
@pytest.mark.postgres
def test_two_gateways_on_one_postgresql_credit_each_deposit_once(
    usdc: Usdc, tmp_path: Path
) -> None:
    from tests.support.postgres import postgres_database

    with postgres_database() as database_url:
        settings = {**payment_settings(usdc), "database_url": database_url}
        with (
            start_gateway(tmp_path / "a", **settings) as first,
            start_gateway(tmp_path / "b", **settings) as second,
            first.http() as http_a,
            second.http() as http_b,
        ):
            users = [sign_in(http_a) for _ in range(3)]
            sent = []
            for index, user in enumerate(users):
                amount = AMOUNT + index
                fund(usdc, user.address, amount)
                sent.append((user, send(usdc, user.address, usdc.treasury, amount), amount))
            for user, tx_hash, _ in sent:
                assert topup(http_a, user, tx_hash).status_code == 200
                assert topup(http_b, user, tx_hash).status_code == 200
            mine(usdc.anvil.w3, CONFIRMATIONS)
            for user, tx_hash, amount in sent:
                wait_for_status(http_b, user, tx_hash, "credited")
                assert balance(http_a, user) == amount
                assert ledger_entries(first.settings, tx_hash) == 1


@pytest.mark.anvil
def test_the_configured_token_passes_the_domain_check(
    usdc: Usdc, gateway: RunningGateway, http: httpx.Client
) -> None:
    deposits = gateway.app.state.services.payments.deposits
    wait_until(lambda: deposits._chain_checked, timeout=30, what="the chain checked")
    assert deposits.misconfigured is None


@pytest.mark.anvil
def test_a_token_with_another_eip712_name_credits_nothing(usdc: Usdc, tmp_path: Path) -> None:
    misnamed = Usdc(usdc.anvil, deploy_token(usdc.anvil.w3, name="USDC"), usdc.treasury)
    settings = {**payment_settings(misnamed), "payments_usdc_name": "USD Coin"}
    with start_gateway(tmp_path, **settings) as running, running.http() as http:
        deposits = running.app.state.services.payments.deposits
        wait_until(lambda: deposits.misconfigured is not None, timeout=30, what="a mismatch")
        assert "'USD Coin'" in deposits.misconfigured
        assert misnamed.token.address.lower() in deposits.misconfigured.lower()
        user = sign_in(http)
        fund(misnamed, user.address, AMOUNT)
        tx_hash = send(misnamed, user.address, misnamed.treasury, AMOUNT)
        assert topup(http, user, tx_hash).status_code == 200
        mine(usdc.anvil.w3, CONFIRMATIONS + 1)
        # A few more passes of the watcher; the deposit stays as it was posted.
        passes = deposits.passes
        wait_until(lambda: deposits.passes >= passes + 3, timeout=30, what="watcher passes")
        assert [d["status"] for d in deposits_of(http, user, tx_hash)] == ["received"]
        assert balance(http, user) == 0
        assert ledger_entries(running.settings, tx_hash) == 0


@pytest.mark.anvil
def test_deposits_come_in_pages_newest_first(http: httpx.Client) -> None:
    user = sign_in(http)
    hashes = ["0x" + f"{n:02x}" * 32 for n in (1, 2, 3)]
    for tx_hash in hashes:
        assert topup(http, user, tx_hash).status_code == 200
    headers = {"Authorization": f"Bearer {user.key}"}

    first = http.get("/v1/credits/deposits", params={"limit": 2}, headers=headers).json()
    assert [d["tx_hash"] for d in first["data"]] == [hashes[2], hashes[1]]
    assert first["has_more"] is True and first["last_id"] == first["data"][-1]["id"]
    rest = http.get(
        "/v1/credits/deposits", params={"limit": 2, "after": first["last_id"]}, headers=headers
    ).json()
    assert [d["tx_hash"] for d in rest["data"]] == [hashes[0]]
    assert rest["has_more"] is False
    everything = http.get("/v1/credits/deposits", headers=headers).json()
    assert [d["tx_hash"] for d in everything["data"]] == hashes[::-1]

    other = sign_in(http)  # another account's cursor is no cursor
    response = http.get(
        "/v1/credits/deposits",
        params={"after": first["last_id"]},
        headers={"Authorization": f"Bearer {other.key}"},
    )
    assert response.status_code == 404 and response.json()["error"]["param"] == "after"
    for bad in ("dep_x", "claim_99999999999999999999", "nonsense"):
        response = http.get("/v1/credits/deposits", params={"after": bad}, headers=headers)
        assert response.status_code == 404, response.text
    assert http.get("/v1/credits/deposits", params={"limit": 0}, headers=headers).status_code == 400


@pytest.mark.anvil
def test_a_hash_posted_before_it_was_sent_expires_and_can_be_posted_again(
    usdc: Usdc, tmp_path: Path
) -> None:
    settings = {**payment_settings(usdc), "payments_claim_ttl": 0.5}
    with start_gateway(tmp_path, **settings) as running, running.http() as http:
        wallet = Account.create()
        response = http.post(SIGN_IN_PATH, json=signed(http, wallet))
        assert response.status_code == 200, response.text
        user = User(wallet.address, response.json()["key"])
        w3 = usdc.anvil.w3
        w3.manager.request_blocking(RPCEndpoint("anvil_setBalance"), [wallet.address, hex(10**18)])
        mint(usdc.token, wallet.address, AMOUNT)
        transfer = usdc.token.functions.transfer(usdc.treasury, AMOUNT).build_transaction(
            {"from": wallet.address, "nonce": 0, "gas": 100_000, "chainId": w3.eth.chain_id}
        )
        signed_tx = wallet.sign_transaction(transfer)
        tx_hash = signed_tx.hash.to_0x_hex()

        assert topup(http, user, tx_hash).status_code == 200  # before it is sent
        expired = wait_for_status(http, user, tx_hash, "expired")
        assert "not found" in expired["error"]

        w3.eth.send_raw_transaction(signed_tx.raw_transaction)
        mine(w3, CONFIRMATIONS)
        assert topup(http, user, tx_hash).json()["data"][0]["status"] in (
            "received",
            "mined",
            "credited",
        )
        wait_for_status(http, user, tx_hash, "credited")
        assert balance(http, user) == AMOUNT
        assert ledger_entries(running.settings, tx_hash) == 1
