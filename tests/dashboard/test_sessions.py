"""Dashboard sign-in over real HTTP: sessions, their cookie, CSRF, security headers.

A browser signs in with an API key (or the admin key) through a form that carries the
token of its own sign-in cookie; it gets an HttpOnly, SameSite=Strict session cookie
for ``/dashboard``. Every state change needs the session's CSRF token; a session ends at
sign-out, at expiry, or when its key is revoked; ``next`` never leaves the dashboard.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.cookies import Morsel, SimpleCookie
from pathlib import Path

import httpx
import pytest

from infermesh.accounts.records import Principal
from infermesh.accounts.service import AccountService
from infermesh.accounts.sessions import DashboardSessions
from infermesh.config import Settings
from infermesh.store.database import Database
from tests.support.gateway import RunningGateway, create_key, start_gateway

ADMIN_KEY = "adm-dashboard-secret"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with start_gateway(
        tmp_path_factory.mktemp("dashboard-sessions"),
        specs=[],
        embedded_worker=False,
        admin_key=ADMIN_KEY,
    ) as running:
        yield running


def browser(gateway: RunningGateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.base_url, timeout=30, follow_redirects=False)


def sign_in_form(client: httpx.Client) -> str:
    """The sign-in page's CSRF token (its cookie is now in ``client``)."""
    page = client.get("/dashboard/sign-in")
    assert page.status_code == 200
    match = CSRF.search(page.text)
    assert match is not None
    return match.group(1)


def sign_in(client: httpx.Client, key: str, **extra: str) -> httpx.Response:
    token = sign_in_form(client)
    return client.post("/dashboard/sign-in", data={"csrf": token, "api_key": key, **extra})


def session_cookie(answer: httpx.Response) -> Morsel[str]:
    """The session cookie the answer sets (it sets others besides)."""
    for header in answer.headers.get_list("set-cookie"):
        cookie = SimpleCookie(header)
        if "infermesh_session" in cookie:
            return cookie["infermesh_session"]
    raise AssertionError(f"no session cookie in {answer.headers.get_list('set-cookie')}")


def page_csrf(client: httpx.Client, path: str = "/dashboard/overview") -> str:
    match = CSRF.search(client.get(path).text)
    assert match is not None
    return match.group(1)


def assert_no_inline_script(html: str) -> None:
    """Every script of ``html`` is a file (``src``), and no tag has an event handler."""
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts, "the page loads its script"
    for attributes, body in scripts:
        assert 'src="' in attributes and not body.strip(), attributes
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", html), "an inline event handler"


def test_pages_carry_a_strict_content_security_policy_and_no_inline_script(
    gateway: RunningGateway,
) -> None:
    with browser(gateway) as client:
        page = client.get("/dashboard/sign-in")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert_no_inline_script(page.text)


def test_signing_in_with_a_key_opens_a_session_with_a_safe_cookie(
    gateway: RunningGateway,
) -> None:
    with browser(gateway) as client:
        answer = sign_in(client, gateway.key)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/dashboard/overview"
        cookie = session_cookie(answer)
        assert cookie["httponly"] and cookie["samesite"] == "strict"
        assert cookie["path"] == "/dashboard" and int(cookie["max-age"]) > 0
        assert not cookie["secure"]  # plain HTTP here; Secure over HTTPS (next test)
        assert client.get("/dashboard/").headers["location"] == "/dashboard/overview"


def test_the_cookie_is_secure_behind_an_https_proxy(gateway: RunningGateway) -> None:
    with browser(gateway) as client:
        token = sign_in_form(client)
        answer = client.post(
            "/dashboard/sign-in",
            data={"csrf": token, "api_key": gateway.key},
            headers={"x-forwarded-proto": "https"},
        )
    assert session_cookie(answer)["secure"]


def test_sign_in_needs_the_forms_token_and_a_valid_key(gateway: RunningGateway) -> None:
    with browser(gateway) as client:
        forged = client.post("/dashboard/sign-in", data={"api_key": gateway.key})
        assert forged.status_code == 403 and "infermesh_session" not in forged.headers.get(
            "set-cookie", ""
        )
        assert "content-security-policy" in forged.headers  # an error page, not JSON
        wrong = sign_in(client, "sk-im-" + "x" * 43)
        assert wrong.status_code == 401 and "unknown or revoked" in wrong.text
        assert client.get("/dashboard/").headers["location"] == "/dashboard/sign-in"


def test_next_stays_on_the_dashboard(gateway: RunningGateway) -> None:
    for target, expected in [
        ("/dashboard/usage", "/dashboard/usage"),
        ("https://evil.example/dashboard/x", "/dashboard/overview"),
        ("//evil.example/dashboard/x", "/dashboard/overview"),
        ("/elsewhere", "/dashboard/overview"),
    ]:
        with browser(gateway) as client:
            answer = sign_in(client, gateway.key, next=target)
        assert answer.headers["location"] == expected, target


def test_a_page_without_a_session_sends_the_browser_to_sign_in(gateway: RunningGateway) -> None:
    with browser(gateway) as client:
        answer = client.get("/dashboard/usage?model=x")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard/sign-in?next=%2Fdashboard%2Fusage%3Fmodel%3Dx"


def test_sign_out_needs_the_csrf_token_and_ends_the_session(gateway: RunningGateway) -> None:
    with browser(gateway) as client:
        sign_in(client, gateway.key)
        token = page_csrf(client)
        refused = client.post("/dashboard/sign-out", data={"csrf": "forged"})
        assert refused.status_code == 403
        assert client.get("/dashboard/").headers["location"] == "/dashboard/overview"
        session = client.cookies.get("infermesh_session")
        out = client.post("/dashboard/sign-out", data={"csrf": token})
        assert out.status_code == 303
        assert out.headers["location"].startswith("/dashboard/sign-in")
    with browser(gateway) as stale:  # the old cookie, replayed, no longer opens pages
        stale.cookies.set("infermesh_session", session or "", path="/dashboard")
        assert stale.get("/dashboard/").headers["location"] == "/dashboard/sign-in"


def test_revoking_the_key_ends_its_sessions(gateway: RunningGateway, tmp_path: Path) -> None:
    key = asyncio.run(create_key(gateway.settings, "revoked-later"))

    async def revoke() -> None:
        database = Database.from_settings(gateway.settings)
        try:
            service = AccountService(database)
            principal = await service.authenticate(key)
            assert principal is not None
            await service.revoke_key(principal.key_id)
        finally:
            await database.dispose()

    with browser(gateway) as client:
        sign_in(client, key)
        assert client.get("/dashboard/").headers["location"] == "/dashboard/overview"
        asyncio.run(revoke())
        assert client.get("/dashboard/").headers["location"] == "/dashboard/sign-in"


def test_the_admin_key_opens_an_admin_session_without_an_account(
    gateway: RunningGateway,
) -> None:
    with browser(gateway) as client:
        answer = sign_in(client, ADMIN_KEY)
        assert answer.headers["location"] == "/dashboard/admin"
        account_page = client.get("/dashboard/overview")
        assert account_page.status_code == 403 and "admin" in account_page.text


def test_wrong_keys_lock_an_address_out_of_the_admin_sign_in(tmp_path: Path) -> None:
    with (
        start_gateway(
            tmp_path, specs=[], embedded_worker=False, admin_key=ADMIN_KEY, admin_lockout_failures=3
        ) as locked,
        browser(locked) as client,
    ):
        for _ in range(3):
            assert sign_in(client, "adm-wrong-guess").status_code == 401
        refused = sign_in(client, ADMIN_KEY)  # the right key, too late
        assert refused.status_code == 429 and "too many" in refused.text.lower()
        assert sign_in(client, locked.key).status_code == 303  # a user's key still works


async def test_expired_sessions_are_refused_and_purged(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    database = Database.from_settings(settings)
    try:
        await database.migrate()
        account = await AccountService(database).create_key("clocked")
        now = [datetime(2026, 1, 1, tzinfo=UTC)]
        sessions = DashboardSessions(database, ttl=timedelta(hours=1), clock=lambda: now[0])
        record = account.record
        principal = Principal(record.id, record.account_id, record.account, "free")
        opened = await sessions.open_for_key(principal)
        assert await sessions.find(opened.token) is not None
        now[0] += timedelta(hours=1)
        assert await sessions.find(opened.token) is None  # at its expiry, not a second later
        assert await sessions.purge_expired() == 1
        assert await sessions.purge_expired() == 0
    finally:
        await database.dispose()
