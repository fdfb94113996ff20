"""The admin's pages in a real browser: an admin grants credit to an account and sees its
balance change; the account's owner, in a browser of their own, sees it on Overview.
Screenshots of each admin page at desktop and phone width go to ``docs/screenshots/``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

from infermesh.billing.pricing import Pricing
from infermesh.catalog.spec import ModelSpec
from tests.dashboard.browser import DESKTOP, Tab, in_thread, sign_in
from tests.fakes.engine import run_engine
from tests.gateway.conftest import engine_specs
from tests.mesh.helpers import connected
from tests.support.gateway import RunningGateway, create_key, start_gateway

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ADMIN_KEY = "adm-browser-admin-secret"


def priced(spec: ModelSpec) -> ModelSpec:
    """``spec``, priced unless it is the failing model (which a new account, without
    credit yet, calls for the Errors page)."""
    if spec.id == "scripted-broken":
        return spec
    pricing = Pricing(input_per_million="0.15", output_per_million="0.6", per_request="0.001")
    return spec.model_copy(update={"pricing": pricing})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with (
        run_engine(models=["scripted-1"], api_key="upstream-secret") as engine,
        start_gateway(
            tmp_path_factory.mktemp("dashboard-admin-browser"),
            specs=[priced(spec) for spec in engine_specs(engine.base_url)],
            secrets={"SCRIPTED_ENGINE_KEY": "upstream-secret"},
            wait_for=["scripted", "scripted-broken"],
            admin_key=ADMIN_KEY,
        ) as running,
    ):
        yield running


def test_an_admin_grants_credit(gateway: RunningGateway, tab: Tab, chromium: Browser) -> None:
    key = in_thread(lambda: create_key(gateway.settings, "acme-labs", tier="standard", grant=0))
    with gateway.http() as http:  # a request that fails, for the Errors page
        http.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "scripted-broken", "messages": [{"role": "user", "content": "hi"}]},
        )
    page = tab.page
    base = gateway.base_url
    sign_in(tab, base, ADMIN_KEY)
    assert page.url.endswith("/dashboard/admin/accounts")

    page.get_by_label("Name contains").fill("acme")
    page.get_by_role("button", name="Search").click()
    row = page.locator("#accounts tbody tr", has_text="acme-labs")
    assert row.locator(".balance").inner_text() == "$0.00"
    tab.shoot("admin-accounts")

    row.get_by_role("link", name="acme-labs").click()
    assert page.locator("#balance .value").inner_text() == "$0.00"
    page.get_by_label("Amount (USD)").fill("5")
    page.get_by_label("Reason").fill("welcome credit")
    page.get_by_role("button", name="Grant credit").click()
    page.wait_for_url(lambda url: "notice=" in url)
    assert page.get_by_role("status").inner_text().startswith("Granted $5.00 to acme-labs")
    assert page.locator("#balance .value").inner_text() == "$5.00"
    assert page.locator("#ledger tbody tr").first.inner_text().count("welcome credit") == 1
    tab.shoot("admin-account")

    go_to(page, "Accounts")
    page.get_by_label("Name contains").fill("acme")
    page.get_by_role("button", name="Search").click()
    assert row.locator(".balance").inner_text() == "$5.00"

    _owner_sees_the_balance(chromium, base, key, "$5.00")
    _shoot_the_other_pages(gateway, tab)
    tab.assert_clean()


def _owner_sees_the_balance(chromium: Browser, base: str, key: str, expected: str) -> None:
    """The account's owner, in a browser of their own, sees ``expected`` on Overview."""
    context = chromium.new_context(viewport=DESKTOP)
    try:
        owner = Tab(context.new_page())
        owner.watch()
        sign_in(owner, base, key)
        assert owner.page.url.endswith("/dashboard/overview")
        assert owner.page.locator("#balance .value").inner_text() == expected
        owner.assert_clean()
    finally:
        context.close()


def _shoot_the_other_pages(gateway: RunningGateway, tab: Tab) -> None:
    """Errors, Models and Network (with a connected worker besides the gateway's own)."""
    page = tab.page
    go_to(page, "Errors")
    assert page.locator("#failed tbody tr", has_text="scripted-broken").count() == 1
    tab.shoot("admin-errors")
    go_to(page, "Models")
    assert page.locator("#models tbody tr", has_text="scripted-plain").count() == 1
    tab.shoot("admin-models")
    with worker_connected(gateway, "gpu-box-1", model="scripted") as node_id:
        go_to(page, "Network")
        assert page.locator("#workers tbody tr", has_text=node_id).count() == 1
        tab.shoot("admin-network")


def go_to(page: Page, name: str) -> None:
    """Follow the link ``name`` of the dashboard's navigation."""
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name=name).click()


@contextmanager
def worker_connected(gateway: RunningGateway, name: str, *, model: str) -> Iterator[str]:
    """A raw worker connected to ``gateway`` for the block (on a thread of its own, as
    Playwright's loop holds this one); yields its node id."""
    welcomed: Future[str] = Future()
    leave = threading.Event()

    async def hold() -> None:
        async with connected(gateway, name, model=model, concurrency=4) as worker:
            welcomed.set_result(worker.welcome["node_id"])
            await asyncio.to_thread(leave.wait)

    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(asyncio.run, hold())
        held.add_done_callback(
            lambda done: (
                welcomed.done()
                or welcomed.set_exception(
                    done.exception() or RuntimeError("the worker left before its welcome")
                )
            )
        )
        try:
            yield welcomed.result(timeout=30)
        finally:
            leave.set()
            held.result(timeout=30)
