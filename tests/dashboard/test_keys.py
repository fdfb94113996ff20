"""The dashboard's API keys page over real HTTP, checked against the real API.

An account's owner lists its keys, creates one (shown once, on the POST's answer, never
again), renames, rotates and revokes one, and sets a key's own rate limits; each change
is seen by the API at once. Every change needs the session's CSRF token and a key of
the session's account; the admin's session has no keys page.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.dashboard.test_sessions import (
    assert_no_inline_script,
    browser,
    page_csrf,
    sign_in,
)
from tests.fakes.engine import run_engine
from tests.gateway.conftest import engine_specs
from tests.support.gateway import RunningGateway, create_key, start_gateway

ADMIN_KEY = "adm-keys-page-secret"
NEW_KEY = re.compile(r'id="new-key">(sk-im-[A-Za-z0-9_-]+)<')
KEYS = "/dashboard/keys"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with (
        run_engine(models=["scripted-1"], api_key="upstream-secret") as engine,
        start_gateway(
            tmp_path_factory.mktemp("dashboard-keys"),
            specs=engine_specs(engine.base_url),
            secrets={"SCRIPTED_ENGINE_KEY": "upstream-secret"},
            wait_for=["scripted"],
            admin_key=ADMIN_KEY,
        ) as running,
    ):
        yield running


@pytest.fixture
def owner(gateway: RunningGateway) -> Iterator[httpx.Client]:
    """A browser signed in with the account's first key (never revoked here)."""
    with browser(gateway) as client:
        assert sign_in(client, gateway.key).status_code == 303
        yield client


def create_on_page(client: httpx.Client, name: str) -> tuple[httpx.Response, str]:
    answer = client.post(KEYS, data={"csrf": page_csrf(client, KEYS), "name": name})
    assert answer.status_code == 200, answer.text
    match = NEW_KEY.search(answer.text)
    assert match is not None
    return answer, match.group(1)


def limits_of(gateway: RunningGateway, key: str) -> httpx.Response:
    """``GET /v1/limits`` with ``key``: 200 with its id and own limits, 401 if refused."""
    with gateway.http() as http:
        return http.get("/v1/limits", headers={"Authorization": f"Bearer {key}"})


def key_id(gateway: RunningGateway, key: str) -> str:
    answer = limits_of(gateway, key)
    assert answer.status_code == 200
    found: str = answer.json()["key_id"]
    return found


def listed_ids(client: httpx.Client) -> set[str]:
    """The ids of the keys the list page shows."""
    return set(re.findall(r'href="/dashboard/keys/(key_[0-9a-f]+)"', client.get(KEYS).text))


def post(client: httpx.Client, path: str, **fields: str) -> httpx.Response:
    """``fields`` posted to ``path`` with the session's CSRF token."""
    return client.post(path, data={"csrf": page_csrf(client, KEYS), **fields})


def test_a_created_key_works_and_is_shown_only_on_the_answer(
    gateway: RunningGateway, owner: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    answer, key = create_on_page(owner, "laptop")
    assert answer.headers["cache-control"] == "no-store"
    assert "location" not in answer.headers and key not in str(answer.url)
    arguments = f'(\n    base_url="{gateway.api_url}",\n    api_key="{key}",\n'
    assert f"client = OpenAI{arguments}" in answer.text
    assert f"llm = ChatOpenAI{arguments}" in answer.text
    assert f"curl {gateway.api_url}/chat/completions" in answer.text
    assert f"Authorization: Bearer {key}" in answer.text
    assert 'data-copy="new-key"' in answer.text and 'model="scripted"' in answer.text
    snippet = re.search(r'<pre id="snippet-python">(.*?)</pre>', answer.text, flags=re.S)
    assert snippet is not None
    exec(html.unescape(snippet.group(1)), {})  # the page's own example, run as it is
    assert capsys.readouterr().out.strip()  # the scripted engine's answer
    listing = owner.get(KEYS)
    assert "laptop" in listing.text and key[:12] in listing.text
    assert key not in listing.text
    assert key not in owner.get(f"{KEYS}/{key_id(gateway, key)}").text


def test_rename_shows_the_new_name_escaped(gateway: RunningGateway, owner: httpx.Client) -> None:
    _, key = create_on_page(owner, "before-rename")
    target = key_id(gateway, key)
    answer = post(owner, f"{KEYS}/{target}/rename", name="ci <runner>")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(f"{KEYS}/{target}?notice=")
    listing = owner.get(KEYS).text
    assert "ci &lt;runner&gt;" in listing and "before-rename" not in listing
    assert "<runner>" not in listing


def test_rotate_shows_the_new_key_once_and_the_old_one_stops(
    gateway: RunningGateway, owner: httpx.Client
) -> None:
    _, old = create_on_page(owner, "to-rotate")
    answer = post(owner, f"{KEYS}/{key_id(gateway, old)}/rotate")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    match = NEW_KEY.search(answer.text)
    assert match is not None
    new = match.group(1)
    assert new != old and "Key rotated" in answer.text
    assert limits_of(gateway, old).status_code == 401
    assert limits_of(gateway, new).status_code == 200
    assert new not in owner.get(KEYS).text


def test_revoke_stops_the_key(gateway: RunningGateway, owner: httpx.Client) -> None:
    _, key = create_on_page(owner, "to-revoke")
    target = key_id(gateway, key)
    confirm = owner.get(f"{KEYS}/{target}").text
    assert 'data-confirm="Revoke this key?' in confirm and "signs you out" not in confirm
    answer = post(owner, f"{KEYS}/{target}/revoke")
    assert answer.status_code == 303 and answer.headers["location"].startswith(f"{KEYS}?notice=")
    assert limits_of(gateway, key).status_code == 401
    detail = owner.get(f"{KEYS}/{target}").text
    assert "revoked" in detail and f"{target}/revoke" not in detail


def test_revoking_the_sessions_own_key_signs_it_out(
    gateway: RunningGateway, owner: httpx.Client
) -> None:
    _, key = create_on_page(owner, "session-key")
    target = key_id(gateway, key)
    with browser(gateway) as client:
        sign_in(client, key)
        page = client.get(f"{KEYS}/{target}").text
        assert re.search(r'data-confirm="Revoke this key\?[^"]*signs you out', page)
        answer = post(client, f"{KEYS}/{target}/revoke")
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/dashboard/sign-in?notice=")
        assert client.cookies.get("infermesh_session") is None
        assert client.get(KEYS).headers["location"].startswith("/dashboard/sign-in")
    assert limits_of(gateway, key).status_code == 401


def test_rotating_the_sessions_own_key_shows_the_new_one_and_signs_out(
    gateway: RunningGateway, owner: httpx.Client
) -> None:
    _, key = create_on_page(owner, "session-rotated")
    with browser(gateway) as client:
        sign_in(client, key)
        answer = post(client, f"{KEYS}/{key_id(gateway, key)}/rotate")
        match = NEW_KEY.search(answer.text)
        assert answer.status_code == 200 and match is not None
        assert "you are signed" in answer.text and "/dashboard/sign-out" not in answer.text
        assert client.get(KEYS).headers["location"].startswith("/dashboard/sign-in")
        assert sign_in(client, match.group(1)).status_code == 303


def test_a_key_gets_limits_of_its_own_only_below_the_accounts(
    gateway: RunningGateway, owner: httpx.Client
) -> None:
    _, key = create_on_page(owner, "limited")
    target = key_id(gateway, key)
    page = owner.get(f"{KEYS}/{target}").text
    assert "Account: 600 (set on its tier)" in page and 'max="600"' in page
    fields = {"requests_per_minute": "5", "tokens_per_minute": "", "concurrent_requests": "1"}
    assert post(owner, f"{KEYS}/{target}/limits", **fields).status_code == 303
    own = limits_of(gateway, key).json()["key_limits"]
    assert {name: entry["limit"] for name, entry in own.items()} == {
        "requests_per_minute": 5,
        "concurrent_requests": 1,
    }
    for wrong in ("601", "0", "five"):
        refused = post(owner, f"{KEYS}/{target}/limits", requests_per_minute=wrong)
        assert refused.status_code == 400, wrong
    assert limits_of(gateway, key).json()["key_limits"]["requests_per_minute"]["limit"] == 5
    cleared = post(owner, f"{KEYS}/{target}/limits", requests_per_minute="", concurrent_requests="")
    assert cleared.status_code == 303
    assert limits_of(gateway, key).json()["key_limits"] == {}


def test_every_change_needs_the_sessions_csrf_token(
    gateway: RunningGateway, owner: httpx.Client
) -> None:
    _, key = create_on_page(owner, "csrf-target")
    target = key_id(gateway, key)
    before = listed_ids(owner)
    for path, fields in [
        (KEYS, {"name": "forged"}),
        (f"{KEYS}/{target}/rename", {"name": "forged"}),
        (f"{KEYS}/{target}/rotate", {}),
        (f"{KEYS}/{target}/revoke", {}),
        (f"{KEYS}/{target}/limits", {"requests_per_minute": "1"}),
    ]:
        for token in ({}, {"csrf": "wrong"}):
            answer = owner.post(path, data={**fields, **token})
            assert answer.status_code == 403, (path, token)
            assert "sk-im-" not in answer.text
    listing = owner.get(KEYS).text
    assert listed_ids(owner) == before and "csrf-target" in listing and "forged" not in listing
    assert limits_of(gateway, key).status_code == 200
    assert limits_of(gateway, key).json()["key_limits"] == {}


def test_another_accounts_key_is_not_found_and_left_alone(
    gateway: RunningGateway, owner: httpx.Client
) -> None:
    other = asyncio.run(create_key(gateway.settings, "someone-else", grant=0))
    target = key_id(gateway, other)
    assert other[:12] not in owner.get(KEYS).text and target not in owner.get(KEYS).text
    assert owner.get(f"{KEYS}/{target}").status_code == 404
    for action, fields in [
        ("rename", {"name": "taken"}),
        ("limits", {"requests_per_minute": "1"}),
        ("rotate", {}),
        ("revoke", {}),
    ]:
        answer = post(owner, f"{KEYS}/{target}/{action}", **fields)
        assert answer.status_code == 404, action
    assert post(owner, f"{KEYS}/key_0000000000000000/revoke").status_code == 404
    assert limits_of(gateway, other).json()["key_limits"] == {}
    with browser(gateway) as client:
        sign_in(client, other)
        assert "taken" not in client.get(KEYS).text


def test_the_admin_has_no_keys_page(gateway: RunningGateway) -> None:
    with browser(gateway) as client:
        assert client.get(KEYS).headers["location"].startswith("/dashboard/sign-in")
        sign_in(client, ADMIN_KEY)
        page = client.get(KEYS)
        assert page.status_code == 403
        created = client.post(KEYS, data={"csrf": page_csrf(client, KEYS), "name": "admin"})
        assert created.status_code == 403 and "sk-im-" not in created.text


def test_pages_have_a_strict_policy_and_no_inline_script(
    gateway: RunningGateway, owner: httpx.Client
) -> None:
    created, key = create_on_page(owner, "policy")
    pages = [owner.get(KEYS), owner.get(f"{KEYS}/{key_id(gateway, key)}"), created]
    for page in pages:
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert_no_inline_script(page.text)
