"""Signing in and out in a real browser: the form, the session cookie the page's script
cannot read, the CSP obeyed (no console errors), and keyboard use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dashboard.browser import Tab, sign_in
from tests.support.gateway import RunningGateway, start_gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with start_gateway(
        tmp_path_factory.mktemp("dashboard-browser"), specs=[], embedded_worker=False
    ) as running:
        yield running


def test_sign_in_and_out_in_a_browser(gateway: RunningGateway, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{gateway.base_url}/dashboard/")
    assert page.url.endswith("/dashboard/sign-in")
    tab.shoot("sign-in")
    page.get_by_label("API key").fill("sk-im-not-a-real-key-at-all-000000000000000")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "That key is unknown or revoked."
    assert tab.problems == [  # the refused form's page comes with its status, 401
        "console: Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
    tab.problems.clear()

    sign_in(tab, gateway.base_url, gateway.key)
    assert "/dashboard/overview" in page.url
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    session = cookies["infermesh_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # no script can read the session
    assert page.locator("header .who").inner_text() == "tester"  # the account, in the header

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/dashboard/sign-in**")
    assert page.get_by_role("status").inner_text() == "Signed out."
    page.goto(f"{gateway.base_url}/dashboard/overview")
    assert "/dashboard/sign-in" in page.url
    tab.assert_clean()


def test_the_sign_in_form_works_by_keyboard(gateway: RunningGateway, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{gateway.base_url}/dashboard/sign-in")
    page.keyboard.press("Tab")  # the skip link first
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "api_key"
    page.keyboard.type(gateway.key)
    page.keyboard.press("Enter")
    page.wait_for_url("**/dashboard/overview")
    tab.assert_clean()
