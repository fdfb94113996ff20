"""``GET /v1/limits`` and the admin limits API over real HTTP.

What a key sees of its limits (shape, where each limit comes from, what is left,
unlimited as a null limit, 401 without a key), and the admin API for the limits of a
tier, an account and a key: reading, setting, clearing with null, ``"unlimited"``, the
change applying at once on this gateway, and every refusal (400 ``invalid_limits``,
404, 403 with no admin key configured, 401 with a wrong one) in OpenAI's envelope.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.engine import ScriptedEngine
from tests.gateway.conftest import engine_specs
from tests.gateway.test_admin_api import ADMIN, ADMIN_KEY, admin
from tests.gateway.test_billing import SECRETS, Customer
from tests.gateway.test_errors import assert_envelope
from tests.support.gateway import RunningGateway, create_key, start_gateway

TIER_LIMITS: dict[str, dict[str, Any]] = {
    "api-basic": {
        "requests_per_minute": 5,
        "tokens_per_minute": 1000,
        "tokens_per_day": "unlimited",
        "concurrent_requests": 2,
    },
    "api-patched": {"requests_per_minute": 30},  # changed by one test only
}
TIER_ACCESS = {
    "free": ["fast"],
    "standard": ["fast", "frontier"],
    "pro": ["*"],
    **{tier: ["*"] for tier in TIER_LIMITS},
}
RPM = {"limit": 5, "source": "tier", "window_seconds": 60.0}
TPM = {"limit": 1000, "source": "tier", "window_seconds": 60.0}
TPD = {"limit": None, "source": "tier", "window_seconds": 86400.0}  # unlimited, nothing used
CONCURRENCY = {"limit": 2, "source": "tier"}
BAD_VALUES: list[Any] = [0, -1, 1.5, True, "lots", "", 10**12 + 1, [5], {"value": 5}]


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with start_gateway(
        tmp_path_factory.mktemp("limits-api"),
        specs=engine_specs(engine.base_url),
        secrets=SECRETS,
        wait_for=["scripted"],
        tier_limits=TIER_LIMITS,
        tier_access=TIER_ACCESS,
        admin_key=ADMIN_KEY,
    ) as running:
        yield running


def admin_ok(gateway: RunningGateway, method: str, path: str, json: Any = None) -> Any:
    response = admin(gateway, method, path, json=json)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]
    return response.json()


def my_limits(customer: Customer) -> dict[str, Any]:
    body: dict[str, Any] = customer.json("/v1/limits")
    return body


def another_key(gateway: RunningGateway, account: str) -> str:
    return asyncio.run(create_key(gateway.settings, account, grant=0))


def chat(client: openai.OpenAI, text: str = "hello") -> Any:
    return client.chat.completions.with_raw_response.create(
        model="scripted", messages=[{"role": "user", "content": text}]
    )


# --- GET /v1/limits ------------------------------------------------------------------


def test_v1_limits_shows_the_tier_limits_and_their_use(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway, tier="api-basic")
    body = my_limits(customer)
    key_id = body.pop("key_id")
    assert isinstance(key_id, str) and key_id
    assert customer.key not in str(body)
    fresh = {"remaining": 5, "reset_seconds": 0.0}
    assert body == {
        "object": "rate_limits",
        "account": customer.name,
        "tier": "api-basic",
        "account_limits": {
            "requests_per_minute": {**RPM, **fresh},
            "tokens_per_minute": {**TPM, "remaining": 1000, "reset_seconds": 0.0},
            "tokens_per_day": TPD,
            "concurrent_requests": {**CONCURRENCY, "remaining": 2, "in_use": 0},
        },
        "key_limits": {},
    }

    # "w00 w01" (2 tokens) and max_tokens 10: the engine answers 3, so 5 are used. A
    # token comes back every 60 ms, so what is left depends on the time since.
    started = time.monotonic()
    completion = customer.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "w00 w01"}], max_tokens=10
    )
    assert completion.usage is not None and completion.usage.total_tokens == 5
    used = my_limits(customer)["account_limits"]
    elapsed = time.monotonic() - started
    assert used["requests_per_minute"]["remaining"] == 4
    rpm_reset = used["requests_per_minute"]["reset_seconds"]
    assert 12 - elapsed - 0.001 <= rpm_reset <= 12  # one request is 60 s / 5
    assert 995 <= used["tokens_per_minute"]["remaining"] <= 995 + elapsed / 0.06
    assert 0 <= used["tokens_per_minute"]["reset_seconds"] <= 0.3  # 5 tokens: 5 * 60 ms
    assert used["concurrent_requests"] == {**CONCURRENCY, "remaining": 2, "in_use": 0}


def test_an_unlimited_limit_is_shown_as_a_null_limit(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway, tier="api-basic")
    assert my_limits(customer)["account_limits"]["tokens_per_day"] == {"limit": None, **TPD}
    tier = admin_ok(gateway, "GET", "/admin/tiers/api-basic/limits")
    assert tier["limits"]["tokens_per_day"] == {"limit": None, **TPD}


def test_v1_limits_names_where_each_limit_comes_from(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway, tier="api-basic")
    other = Customer(gateway, customer.name, another_key(gateway, customer.name), 0)
    key_id = my_limits(customer)["key_id"]
    admin_ok(
        gateway, "PATCH", f"/admin/accounts/{customer.name}/limits", {"requests_per_minute": 7}
    )
    admin_ok(gateway, "PATCH", f"/admin/keys/{key_id}/limits", {"tokens_per_minute": 100})

    body = my_limits(customer)
    account_limits = body["account_limits"]
    assert account_limits["requests_per_minute"] == {
        "limit": 7,
        "source": "account",
        "window_seconds": 60.0,
        "remaining": 7,
        "reset_seconds": 0.0,
    }
    assert account_limits["tokens_per_minute"]["source"] == "tier"
    assert account_limits["concurrent_requests"]["source"] == "tier"
    assert body["key_limits"] == {
        "tokens_per_minute": {
            "limit": 100,
            "source": "key",
            "window_seconds": 60.0,
            "remaining": 100,
            "reset_seconds": 0.0,
        }
    }
    others = my_limits(other)
    assert others["key_id"] != key_id
    assert others["account_limits"]["requests_per_minute"]["limit"] == 7  # the account's
    assert others["key_limits"] == {}  # the other key's own: none


def test_v1_limits_needs_a_valid_key(gateway: RunningGateway) -> None:
    with gateway.http() as http:
        missing = http.get("/v1/limits")
        wrong = http.get("/v1/limits", headers={"Authorization": "Bearer sk-im-nope"})
        admin_key = http.get("/v1/limits", headers=ADMIN)
    assert assert_envelope(missing, 401, code="missing_api_key")["type"] == "authentication_error"
    assert_envelope(wrong, 401, code="invalid_api_key")
    assert_envelope(admin_key, 401, code="invalid_api_key")


# --- admin: tiers --------------------------------------------------------------------


def test_admin_reads_tier_limits_configured_and_built_in(gateway: RunningGateway) -> None:
    configured = admin_ok(gateway, "GET", "/admin/tiers/api-basic/limits")
    assert configured == {
        "object": "limit_settings",
        "scope": "tier",
        "subject": "api-basic",
        "tier": "api-basic",
        "set": {},
        "limits": {
            "requests_per_minute": RPM,
            "tokens_per_minute": TPM,
            "tokens_per_day": TPD,
            "concurrent_requests": CONCURRENCY,
        },
    }
    built_in = admin_ok(gateway, "GET", "/admin/tiers/free/limits")
    values = {name: entry.get("limit") for name, entry in built_in["limits"].items()}
    assert values == {
        "requests_per_minute": 20,
        "tokens_per_minute": 40_000,
        "tokens_per_day": 100_000,
        "concurrent_requests": 2,
    }


def test_admin_sets_and_clears_a_tiers_limits_at_once(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway, tier="api-patched")
    path = "/admin/tiers/api-patched/limits"
    changed = admin_ok(
        gateway, "PATCH", path, {"requests_per_minute": 2, "tokens_per_day": "unlimited"}
    )
    assert changed["set"] == {"requests_per_minute": 2, "tokens_per_day": "unlimited"}
    assert changed["limits"]["requests_per_minute"] == {**RPM, "limit": 2}
    assert changed["limits"]["tokens_per_day"].get("limit") is None
    assert admin_ok(gateway, "GET", path) == changed

    client = customer.client()
    assert [chat(client).headers["x-ratelimit-remaining-requests"] for _ in range(2)] == ["1", "0"]
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert caught.value.param == "requests_per_minute"
    assert my_limits(customer)["account_limits"]["requests_per_minute"]["limit"] == 2

    cleared = admin_ok(gateway, "PATCH", path, {"requests_per_minute": None})
    assert cleared["set"] == {"tokens_per_day": "unlimited"}
    assert cleared["limits"]["requests_per_minute"] == {**RPM, "limit": 30}  # as configured
    assert my_limits(customer)["account_limits"]["requests_per_minute"]["limit"] == 30


# --- admin: accounts and keys --------------------------------------------------------


def test_admin_account_limits_apply_at_once_and_null_clears_them(
    gateway: RunningGateway,
) -> None:
    customer = Customer.create(gateway, tier="api-basic")
    path = f"/admin/accounts/{customer.name}/limits"
    assert admin_ok(gateway, "GET", path) == {
        "object": "limit_settings",
        "scope": "account",
        "subject": customer.name,
        "tier": "api-basic",
        "account": customer.name,
        "set": {},
        "limits": {
            "requests_per_minute": RPM,
            "tokens_per_minute": TPM,
            "tokens_per_day": TPD,
            "concurrent_requests": CONCURRENCY,
        },
    }
    client = customer.client()
    assert chat(client).headers["x-ratelimit-remaining-requests"] == "4"

    # One request already used the whole of a 1-a-minute limit: the next is refused.
    lowered = admin_ok(gateway, "PATCH", path, {"requests_per_minute": 1})
    assert lowered["set"] == {"requests_per_minute": 1}
    assert lowered["limits"]["requests_per_minute"] == {**RPM, "limit": 1, "source": "account"}
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert f"account '{customer.name}'" in caught.value.message
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "1"

    lifted = admin_ok(gateway, "PATCH", path, {"requests_per_minute": "unlimited"})
    assert lifted["set"] == {"requests_per_minute": "unlimited"}
    assert lifted["limits"]["requests_per_minute"].get("limit") is None
    assert lifted["limits"]["requests_per_minute"]["source"] == "account"
    answer = chat(client)
    assert "x-ratelimit-limit-requests" not in answer.headers
    assert answer.headers["x-ratelimit-limit-tokens"] == "1000"

    cleared = admin_ok(gateway, "PATCH", path, {"requests_per_minute": None})
    assert cleared["set"] == {}
    assert cleared["limits"]["requests_per_minute"] == RPM
    assert admin_ok(gateway, "GET", path)["set"] == {}
    assert my_limits(customer)["account_limits"]["requests_per_minute"]["source"] == "tier"


def test_admin_key_limits_narrow_one_key_at_once(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway, tier="api-basic")
    key_id = my_limits(customer)["key_id"]
    path = f"/admin/keys/{key_id}/limits"
    shown = admin_ok(gateway, "GET", path)
    assert shown == {
        "object": "limit_settings",
        "scope": "key",
        "subject": key_id,
        "tier": "api-basic",
        "account": customer.name,
        "set": {},
        "limits": {},
        "account_limits": {
            "requests_per_minute": RPM,
            "tokens_per_minute": TPM,
            "tokens_per_day": TPD,
            "concurrent_requests": CONCURRENCY,
        },
    }
    changed = admin_ok(gateway, "PATCH", path, {"requests_per_minute": 1})
    assert changed["set"] == {"requests_per_minute": 1}
    assert changed["limits"] == {
        "requests_per_minute": {"limit": 1, "source": "key", "window_seconds": 60.0}
    }
    assert changed["account_limits"] == shown["account_limits"]

    client = customer.client()
    assert chat(client).headers["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert "this API key" in caught.value.message
    other = gateway.client(api_key=another_key(gateway, customer.name))
    assert chat(other).headers["x-ratelimit-remaining-requests"] == "3"  # the account's 5

    cleared = admin_ok(gateway, "PATCH", path, {"requests_per_minute": None})
    assert (cleared["set"], cleared["limits"]) == ({}, {})
    assert my_limits(customer)["key_limits"] == {}


# --- admin: refusals -----------------------------------------------------------------


def test_admin_refuses_invalid_limits(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway, tier="api-basic")
    key_id = my_limits(customer)["key_id"]
    paths = [
        f"/admin/accounts/{customer.name}/limits",
        f"/admin/keys/{key_id}/limits",
        "/admin/tiers/api-basic/limits",
    ]
    bodies: list[Any] = [{"requests_per_minute": value} for value in BAD_VALUES]
    bodies += [
        {"tokens_per_day": 0},
        {"requests_per_hour": 5},
        {"requests_per_minute": 5, "concurrent": 2},
    ]
    for path in paths:
        for body in bodies:
            response = admin(gateway, "PATCH", path, json=body)
            error = assert_envelope(response, 400, code="invalid_limits")
            assert error["type"] == "invalid_request_error", body
        assert admin_ok(gateway, "GET", path)["set"] == {}  # nothing was changed
    unknown = admin(gateway, "PATCH", paths[0], json={"requests_per_hour": 5})
    assert "requests_per_hour" in assert_envelope(unknown, 400)["message"]


NOT_OBJECTS: list[Any] = [[1, 2], "lots", 5, None]


@pytest.mark.parametrize("body", NOT_OBJECTS)
def test_admin_refuses_a_body_that_is_not_an_object(gateway: RunningGateway, body: Any) -> None:
    path = "/admin/tiers/api-basic/limits"
    error = assert_envelope(admin(gateway, "PATCH", path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert admin_ok(gateway, "GET", path)["set"] == {}


@pytest.mark.parametrize("body", NOT_OBJECTS)
def test_a_body_that_is_not_an_object_is_invalid_limits(gateway: RunningGateway, body: Any) -> None:
    response = admin(gateway, "PATCH", "/admin/tiers/api-basic/limits", json=body)
    assert_envelope(response, 400, code="invalid_limits")


def test_admin_limits_of_unknown_subjects_are_404(gateway: RunningGateway) -> None:
    for path, param in (
        ("/admin/accounts/nobody-at-all/limits", "account"),
        ("/admin/keys/key_does_not_exist/limits", "key_id"),
        ("/admin/tiers/no-such-tier/limits", "tier"),
    ):
        for method, body in (("GET", None), ("PATCH", {"requests_per_minute": 5})):
            error = assert_envelope(admin(gateway, method, path, json=body), 404)
            assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_admin_limits_need_the_admin_key(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway, tier="api-basic")
    path = f"/admin/accounts/{customer.name}/limits"
    for headers in ({}, {"Authorization": "Bearer adm-wrong"}, customer.auth()):
        for method, body in (("GET", None), ("PATCH", {"requests_per_minute": 1})):
            response = admin(gateway, method, path, json=body, headers=headers)
            error = assert_envelope(response, 401, code="invalid_admin_key")
            assert error["type"] == "authentication_error"
    assert admin_ok(gateway, "GET", path)["set"] == {}


def test_admin_limits_are_403_without_an_admin_key_configured(tmp_path: Path) -> None:
    with start_gateway(tmp_path, specs=[]) as bare:
        for path in (
            "/admin/tiers/free/limits",
            "/admin/accounts/tester/limits",
            "/admin/keys/any/limits",
        ):
            for method, body in (("GET", None), ("PATCH", {"requests_per_minute": 1})):
                for headers in ({}, ADMIN, bare.auth()):
                    response = admin(bare, method, path, json=body, headers=headers)
                    error = assert_envelope(response, 403, code="admin_disabled")
                    assert error["type"] == "permission_error"
