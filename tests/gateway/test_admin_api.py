"""The /admin API over HTTP: the admin key, grants (and what is not a grant), tiers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.engine import ScriptedEngine
from tests.gateway.test_billing import GRANT, SECRETS, Customer, priced
from tests.gateway.test_errors import assert_envelope
from tests.support.gateway import RunningGateway, start_gateway

ADMIN_KEY = "admin-test-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    specs = [priced("premium", {"per_request": "0.01"}, engine.base_url, tier="frontier")]
    with start_gateway(
        tmp_path_factory.mktemp("admin"),
        specs=specs,
        secrets=SECRETS,
        wait_for=["premium"],
        admin_key=ADMIN_KEY,
    ) as running:
        yield running


def admin(
    gateway: RunningGateway,
    method: str,
    path: str,
    *,
    json: Any = None,
    headers: dict[str, str] = ADMIN,
) -> httpx.Response:
    with gateway.http() as http:
        return http.request(method, path, json=json, headers=headers)


def grant(gateway: RunningGateway, account: str, body: dict[str, Any]) -> httpx.Response:
    return admin(gateway, "POST", f"/admin/accounts/{account}/grants", json=body)


def balance_of(gateway: RunningGateway, account: str) -> int:
    response = admin(gateway, "GET", f"/admin/accounts/{account}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["held"]["micro_usd"] == 0
    micro: int = body["balance"]["micro_usd"]
    return micro


def test_admin_api_is_disabled_without_an_admin_key(tmp_path: Path) -> None:
    with start_gateway(tmp_path, specs=[]) as gateway:
        for headers in (gateway.auth(), {"Authorization": "Bearer anything"}, {}):
            for method, path, body in (
                ("GET", "/admin/accounts/tester", None),
                ("POST", "/admin/accounts/tester/grants", {"amount_usd": "5", "reason": "x"}),
                ("PATCH", "/admin/accounts/tester", {"tier": "pro"}),
                ("GET", "/admin/workers/earnings", None),
            ):
                with gateway.http() as http:
                    response = http.request(method, path, json=body, headers=headers)
                error = assert_envelope(response, 403, code="admin_disabled")
                assert error["type"] == "permission_error"
        assert Customer(gateway, "tester", gateway.key, 0).balance()[0] == 100_000_000


def test_a_wrong_or_missing_admin_key_is_401(gateway: RunningGateway) -> None:
    path = "/admin/accounts/tester"
    missing = admin(gateway, "GET", path, headers={})
    wrong = admin(gateway, "GET", path, headers={"Authorization": f"Bearer {ADMIN_KEY}x"})
    user_key = admin(gateway, "GET", path, headers=gateway.auth())
    for response in (missing, wrong, user_key):
        assert assert_envelope(response, 401)["type"] == "authentication_error"
    assert wrong.json()["error"]["code"] == "invalid_admin_key"
    assert admin(gateway, "GET", path).status_code == 200


def test_grants_in_usd_and_in_micro_usd(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway)
    in_usd = grant(gateway, customer.name, {"amount_usd": "2.5", "reason": "promo"})
    assert in_usd.status_code == 200, in_usd.text
    assert in_usd.json()["balance"]["micro_usd"] == GRANT + 2_500_000
    newest = in_usd.json()["entries"][0]
    assert (newest["kind"], newest["balance_change"], newest["reason"]) == (
        "grant",
        2_500_000,
        "promo",
    )
    in_micro = grant(gateway, customer.name, {"amount_micro_usd": 7, "reason": "rounding"})
    assert in_micro.status_code == 200, in_micro.text
    assert in_micro.json()["balance"]["micro_usd"] == GRANT + 2_500_007
    tiny = grant(gateway, customer.name, {"amount_usd": "0.000001", "reason": "one micro"})
    assert tiny.json()["balance"]["micro_usd"] == GRANT + 2_500_008
    assert customer.balance() == (GRANT + 2_500_008, 0)
    shown = admin(gateway, "GET", f"/admin/accounts/{customer.name}").json()
    assert shown["name"] == customer.name and shown["tier"] == "pro"
    assert [entry["kind"] for entry in shown["entries"]] == ["grant"] * 4


NOT_GRANTS: list[dict[str, Any]] = [
    {"amount_usd": "-1"},
    {"amount_usd": "0"},
    {"amount_usd": "0.0000001"},
    {"amount_usd": "1000000.000001"},
    {"amount_usd": "5000000"},
    {"amount_usd": "abc"},
    {"amount_usd": ""},
    {"amount_usd": "NaN"},
    {"amount_usd": "Infinity"},
    {"amount_usd": "1e400"},
    {"amount_micro_usd": -5},
    {"amount_micro_usd": 0},
    {"amount_micro_usd": 1_000_000_000_001},
    {"amount_micro_usd": 1.5},
    {"amount_micro_usd": "lots"},
    {"amount_micro_usd": True},
    {"amount_usd": "1", "amount_micro_usd": 1_000_000},
    {},
]


@pytest.mark.parametrize("amount", NOT_GRANTS, ids=[repr(a) for a in NOT_GRANTS])
def test_what_is_not_an_amount_is_refused(gateway: RunningGateway, amount: dict[str, Any]) -> None:
    customer = Customer.create(gateway)
    response = grant(gateway, customer.name, {**amount, "reason": "should not happen"})
    assert_envelope(response, 400)
    assert balance_of(gateway, customer.name) == GRANT


@pytest.mark.parametrize("reason", [None, "", "   ", "x" * 501])
def test_a_grant_needs_a_reason(gateway: RunningGateway, reason: str | None) -> None:
    customer = Customer.create(gateway)
    body: dict[str, Any] = {"amount_usd": "1"} | ({} if reason is None else {"reason": reason})
    assert_envelope(grant(gateway, customer.name, body), 400)
    assert balance_of(gateway, customer.name) == GRANT


def test_a_reference_grants_once(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway)
    body = {"amount_usd": "3", "reason": "invoice paid", "reference": "invoice-0007"}
    first = grant(gateway, customer.name, body)
    again = grant(gateway, customer.name, body)
    assert first.status_code == 200, first.text
    assert assert_envelope(again, 400, code="duplicate_reference")["param"] == "reference"
    assert balance_of(gateway, customer.name) == GRANT + 3_000_000
    assert customer.balance() == (GRANT + 3_000_000, 0)


def test_an_unknown_account_is_404(gateway: RunningGateway) -> None:
    for method, path, body in (
        ("GET", "/admin/accounts/nobody-here", None),
        ("POST", "/admin/accounts/nobody-here/grants", {"amount_usd": "1", "reason": "x"}),
        ("PATCH", "/admin/accounts/nobody-here", {"tier": "pro"}),
    ):
        assert_envelope(admin(gateway, method, path, json=body), 404, code="not_found")


def test_changing_the_tier_changes_which_models_an_account_may_use(
    gateway: RunningGateway,
) -> None:
    customer = Customer.create(gateway, tier="free")
    client = customer.client()
    messages: Any = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="premium", messages=messages)
    assert (refused.value.status_code, refused.value.code) == (402, "tier_exceeded")
    moved = admin(gateway, "PATCH", f"/admin/accounts/{customer.name}", json={"tier": "standard"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["tier"] == "standard"
    completion = client.chat.completions.create(model="premium", messages=messages)
    assert completion.choices[0].message.content == "echo: hello"
    assert customer.balance() == (GRANT - 10_000, 0)
    assert customer.get("/v1/credits/balance").json()["tier"] == "standard"
    assert_envelope(
        admin(gateway, "PATCH", f"/admin/accounts/{customer.name}", json={"tier": ""}), 400
    )
    back = admin(gateway, "PATCH", f"/admin/accounts/{customer.name}", json={"tier": "free"})
    assert back.json()["tier"] == "free"
    with pytest.raises(openai.APIStatusError) as again:
        client.chat.completions.create(model="premium", messages=messages)
    assert again.value.code == "tier_exceeded"
