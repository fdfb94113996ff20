"""The admin's dashboard pages over real HTTP, checked against the real API.

Only the admin key's session opens them: an account's session gets 403, a browser that
is not signed in goes to the sign-in page. The admin grants credit (once per reference,
whatever the form's resending), moves an account to another tier, sets its limits and
revokes its keys, and each change shows in the account's own API answers; the Errors
page lists a request that failed, the Network and Models pages the workers serving now.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infermesh.catalog.spec import ModelSpec
from infermesh.gateway.dashboard.pages._admin import accounts as accounts_page
from tests.dashboard.test_sessions import (
    assert_no_inline_script,
    browser,
    page_csrf,
    sign_in,
)
from tests.fakes.engine import run_engine
from tests.gateway.conftest import engine_specs
from tests.mesh.helpers import connected
from tests.support.gateway import RunningGateway, create_key, start_gateway
from tests.support.redis import redis_url, require_redis, unique_prefix
from tests.support.servers import free_port
from tests.support.waiting import wait_until

ADMIN_KEY = "adm-admin-pages-secret"
ADMIN = "/dashboard/admin"
PAGES = ["/admin/accounts", "/admin/models", "/admin/network", "/admin/errors"]
ACCOUNT_LINK = re.compile(r'href="/dashboard/admin/accounts/(\d+)">([^<]+)</a>')


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    raw = ModelSpec(id="raw", tier="frontier", description="served by raw workers")
    with (
        run_engine(models=["scripted-1"], api_key="upstream-secret") as engine,
        start_gateway(
            tmp_path_factory.mktemp("dashboard-admin"),
            specs=[*engine_specs(engine.base_url), raw],
            secrets={"SCRIPTED_ENGINE_KEY": "upstream-secret"},
            wait_for=["scripted", "scripted-broken"],
            admin_key=ADMIN_KEY,
        ) as running,
    ):
        yield running


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    """A browser signed in with the admin key."""
    with browser(gateway) as client:
        assert sign_in(client, ADMIN_KEY).headers["location"] == ADMIN
        yield client


def new_account(gateway: RunningGateway, name: str, *, tier: str = "free", grant: int = 0) -> str:
    """A key of a new account ``name``."""
    return asyncio.run(create_key(gateway.settings, name, tier=tier, grant=grant))


def account_id(admin: httpx.Client, name: str) -> str:
    """The id of the account ``name``, as the Accounts page links it."""
    listing = admin.get(f"{ADMIN}/accounts", params={"q": name})
    found = {label: number for number, label in ACCOUNT_LINK.findall(listing.text)}
    return found[name]


def post(admin: httpx.Client, path: str, **fields: str) -> httpx.Response:
    """``fields`` posted to ``path`` with the admin session's CSRF token."""
    return admin.post(path, data={"csrf": page_csrf(admin, f"{ADMIN}/accounts"), **fields})


def api(gateway: RunningGateway, key: str, path: str) -> httpx.Response:
    with gateway.http() as http:
        return http.get(path, headers={"Authorization": f"Bearer {key}"})


def test_admin_pages_refuse_accounts_and_send_strangers_to_sign_in(
    gateway: RunningGateway, admin: httpx.Client
) -> None:
    target = account_id(admin, "tester")
    paths = ["/admin", *PAGES, f"/admin/accounts/{target}"]
    with browser(gateway) as stranger:
        for path in paths:
            answer = stranger.get(f"/dashboard{path}")
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/dashboard/sign-in?next="), path
    with browser(gateway) as owner:
        sign_in(owner, gateway.key)
        for path in paths:
            refused = owner.get(f"/dashboard{path}")
            assert refused.status_code == 403 and "admin key" in refused.text, path
        token = page_csrf(owner)
        for action in ("grants", "tier", "limits"):
            posted = owner.post(
                f"{ADMIN}/accounts/{target}/{action}",
                data={"csrf": token, "amount_usd": "5", "reason": "self", "tier": "pro"},
            )
            assert posted.status_code == 403, action


def test_the_admin_lands_on_accounts_and_every_page_is_script_free(
    gateway: RunningGateway, admin: httpx.Client
) -> None:
    home = admin.get(ADMIN)
    assert home.status_code == 303 and home.headers["location"] == f"{ADMIN}/accounts"
    for path in [*PAGES, f"/admin/accounts/{account_id(admin, 'tester')}"]:
        page = admin.get(f"/dashboard{path}")
        assert page.status_code == 200, path
        assert "'unsafe-inline'" not in page.headers["content-security-policy"]
        assert_no_inline_script(page.text)
    assert admin.get(f"{ADMIN}/accounts/999999").status_code == 404
    assert admin.get(f"{ADMIN}/accounts/not-a-number").status_code == 404


def test_a_grant_needs_the_csrf_token_and_credits_once_per_reference(
    gateway: RunningGateway, admin: httpx.Client
) -> None:
    key = new_account(gateway, "grantee")
    target = account_id(admin, "grantee")
    grants = f"{ADMIN}/accounts/{target}/grants"
    grant = {"amount_usd": "5", "reason": "trial credit", "reference": "ticket-42"}
    forged = admin.post(grants, data={"csrf": "forged", **grant})
    assert forged.status_code == 403
    assert api(gateway, key, "/v1/credits/balance").json()["balance"]["usd"] == "0"
    first = post(admin, grants, **grant)
    assert first.status_code == 303
    assert first.headers["location"].startswith(f"{ADMIN}/accounts/{target}?notice=Granted")
    again = post(admin, grants, **grant)  # the same form, sent twice
    assert again.status_code == 303 and "already" in again.headers["location"]
    balance = api(gateway, key, "/v1/credits/balance").json()["balance"]
    assert balance["usd"] == "5" and balance["micro_usd"] == 5_000_000
    page = admin.get(f"{ADMIN}/accounts/{target}").text
    assert "ticket-42" in page and "trial credit" in page and "$5.00" in page
    listing = admin.get(f"{ADMIN}/accounts", params={"q": "grantee"}).text
    assert "$5.00" in listing
    refused = post(admin, grants, amount_usd="-1", reason="bad")
    assert refused.status_code == 400 and "amount" in refused.text.lower()
    unexplained = post(admin, grants, amount_usd="1", reason=" ")
    assert unexplained.status_code == 400 and "reason" in unexplained.text


def test_a_tier_change_takes_effect_on_the_accounts_limits(
    gateway: RunningGateway, admin: httpx.Client
) -> None:
    key = new_account(gateway, "climber", tier="free")
    target = account_id(admin, "climber")
    assert api(gateway, key, "/v1/limits").json()["tier"] == "free"
    moved = post(admin, f"{ADMIN}/accounts/{target}/tier", tier="pro")
    assert moved.status_code == 303
    limits = api(gateway, key, "/v1/limits").json()
    assert limits["tier"] == "pro"
    assert limits["account_limits"]["requests_per_minute"]["limit"] == 600
    assert limits["account_limits"]["requests_per_minute"]["source"] == "tier"
    unknown = post(admin, f"{ADMIN}/accounts/{target}/tier", tier="platinum")
    assert unknown.status_code == 400 and "Unknown tier" in unknown.text


def test_account_limits_set_on_the_page_hold_the_account(
    gateway: RunningGateway, admin: httpx.Client
) -> None:
    key = new_account(gateway, "limited", tier="free")
    target = account_id(admin, "limited")
    limits_path = f"{ADMIN}/accounts/{target}/limits"
    saved = post(admin, limits_path, requests_per_minute="7", tokens_per_day="unlimited")
    assert saved.status_code == 303
    account_limits = api(gateway, key, "/v1/limits").json()["account_limits"]
    assert account_limits["requests_per_minute"]["limit"] == 7
    assert account_limits["requests_per_minute"]["source"] == "account"
    assert account_limits["tokens_per_day"]["limit"] is None  # unlimited
    assert account_limits["tokens_per_day"]["source"] == "account"
    page = admin.get(f"{ADMIN}/accounts/{target}").text
    assert 'value="7"' in page and 'value="unlimited"' in page
    cleared = post(admin, limits_path, requests_per_minute="", tokens_per_day="")
    assert cleared.status_code == 303
    after = api(gateway, key, "/v1/limits").json()["account_limits"]
    assert after["requests_per_minute"]["limit"] == 20  # the free tier's again
    bad = post(admin, limits_path, requests_per_minute="lots")
    assert bad.status_code == 400 and "whole number" in bad.text


def test_accounts_are_searched_by_name_and_paged(
    gateway: RunningGateway, admin: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("Pager-a", "pager-b", "pager-c"):
        new_account(gateway, name)
    monkeypatch.setattr(accounts_page, "PAGE_SIZE", 2)
    first = admin.get(f"{ADMIN}/accounts", params={"q": "PAGER"}).text
    assert [label for _, label in ACCOUNT_LINK.findall(first)] == ["Pager-a", "pager-b"]
    next_link = re.search(r'href="([^"]+)" rel="next"', first)
    assert next_link is not None
    second = admin.get(next_link.group(1).replace("&amp;", "&")).text
    assert [label for _, label in ACCOUNT_LINK.findall(second)] == ["pager-c"]
    assert 'rel="next"' not in second and "First page" in second
    wildcard = admin.get(f"{ADMIN}/accounts", params={"q": "%"}).text
    assert not ACCOUNT_LINK.findall(wildcard)  # a literal %, not a wildcard


def test_the_admin_revokes_an_accounts_key(gateway: RunningGateway, admin: httpx.Client) -> None:
    key = new_account(gateway, "revokee")
    target = account_id(admin, "revokee")
    key_id = api(gateway, key, "/v1/limits").json()["key_id"]
    page = admin.get(f"{ADMIN}/accounts/{target}").text
    assert f"/keys/{key_id}/revoke" in page and "data-confirm=" in page
    elsewhere = post(admin, f"{ADMIN}/accounts/{account_id(admin, 'tester')}/keys/{key_id}/revoke")
    assert elsewhere.status_code == 404  # a key of another account
    revoked = post(admin, f"{ADMIN}/accounts/{target}/keys/{key_id}/revoke")
    assert revoked.status_code == 303 and "Revoked" in revoked.headers["location"]
    assert api(gateway, key, "/v1/limits").status_code == 401


def test_the_errors_page_lists_a_failed_request(
    gateway: RunningGateway, admin: httpx.Client
) -> None:
    key = new_account(gateway, "unlucky", tier="pro", grant=10_000_000)
    with gateway.http() as http:
        failed = http.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "scripted-broken", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert failed.status_code >= 500
    page = admin.get(f"{ADMIN}/errors").text
    row = _first_row(page, "failed")
    assert "unlucky" in row and "scripted-broken" in row and "chat.completions" in row
    code = re.search(r'class="error-code">([^<]+)<', row)
    assert code is not None
    same_code = admin.get(f"{ADMIN}/errors", params={"error_code": code.group(1)}).text
    assert "unlucky" in _first_row(same_code, "failed")
    other_model = admin.get(f"{ADMIN}/errors", params={"model": "scripted"}).text
    assert "No failed request matches" in other_model


def test_network_and_models_pages_show_the_workers_serving_now(
    gateway: RunningGateway, admin: httpx.Client
) -> None:
    async def with_raw_worker() -> tuple[str, str, str]:
        async with (
            connected(gateway, "dash-raw", model="raw", concurrency=3) as worker,
            httpx.AsyncClient(base_url=gateway.base_url, cookies=admin.cookies) as client,
        ):
            network = (await client.get(f"{ADMIN}/network")).text
            models = (await client.get(f"{ADMIN}/models")).text
            node_id: str = worker.welcome["node_id"]
            return network, models, node_id

    network, models, node_id = asyncio.run(with_raw_worker())
    raw_row = _row_with(network, node_id)
    assert "dash-raw" in raw_row and "default" in raw_row  # its name and operator
    assert "<code>raw \u00d73</code>" in raw_row and "connected here" in raw_row
    assert "in-process" in network  # the gateway's own worker, serving the scripted models
    assert "Shared presence is <strong>off</strong>" in network
    raw_model = _row_with(models, "<code>raw</code>")
    assert 'class="workers">1<' in raw_model and "3 slots" in raw_model
    assert "this gateway" in raw_model
    orphan = _row_with(models, "<code>orphan</code>")
    assert 'class="workers">0<' in orphan and "unavailable" in orphan


def test_with_shared_presence_the_network_page_shows_the_other_gateways(
    tmp_path: Path,
) -> None:
    require_redis()
    shared: dict[str, Any] = {
        "specs": [ModelSpec(id="raw", tier="frontier")],
        "embedded_worker": False,
        "admin_key": ADMIN_KEY,
        "redis_url": redis_url(),
        "redis_prefix": unique_prefix(),
        "peer_secret": "network-secret",
        "presence_interval": 0.1,
    }
    port = free_port()
    far_url = f"http://127.0.0.1:{port}"
    with (
        start_gateway(tmp_path, **shared) as near,
        start_gateway(tmp_path, port=port, peer_url=far_url, **shared) as far,
        browser(near) as admin,
    ):
        sign_in(admin, ADMIN_KEY)

        def network_lists(node_id: str) -> bool:
            workers = _table(admin.get(f"{ADMIN}/network").text, "workers")
            return node_id in workers

        async def with_far_worker() -> tuple[str, str, str]:
            async with connected(far, "far-worker", model="raw") as worker:
                node_id: str = worker.welcome["node_id"]
                await asyncio.to_thread(wait_until, lambda: network_lists(node_id), timeout=10)
                network = await asyncio.to_thread(admin.get, f"{ADMIN}/network")
                models = await asyncio.to_thread(admin.get, f"{ADMIN}/models")
                return network.text, models.text, node_id

        network, models, node_id = asyncio.run(with_far_worker())
    assert "Shared presence is <strong>on</strong>" in network
    far_row = _row_with(_table(network, "workers"), node_id)
    assert "through its gateway" in far_row and "far-worker" in far_row
    far_gateway = _row_with(network, f"<code>{far_url}</code>")
    gateway_id = re.search(r"<code>(gw-[0-9a-f]+)</code>", far_gateway)
    assert gateway_id is not None and gateway_id.group(1) in far_row
    assert gateway_id.group(1) in _row_with(models, "<code>raw</code>")


def _table(page: str, table: str) -> str:
    match = re.search(rf'<table id="{table}">.*?</table>', page, flags=re.S)
    return match.group(0) if match is not None else ""


def _first_row(page: str, table: str) -> str:
    match = re.search(rf'<table id="{table}">.*?<tbody>\s*(<tr.*?</tr>)', page, flags=re.S)
    assert match is not None, page
    return match.group(1)


def _row_with(page: str, needle: str) -> str:
    rows: list[Any] = re.findall(r"<tr\b.*?</tr>", page, flags=re.S)
    found = [row for row in rows if needle in row]
    assert found, needle
    return str(found[0])
