"""A user's day in a real browser: sign in with a key, create a key on the API keys page,
call the API with it through the openai SDK, see the request in Usage and the balance
move on Overview, revoke the key and see the API refuse it. Screenshots of each page at
desktop and phone width go to ``docs/screenshots/``."""

from __future__ import annotations

import re
from collections.abc import Iterator

import openai
import pytest

from infermesh.billing.pricing import Pricing
from infermesh.catalog.spec import ModelSpec
from tests.dashboard.browser import Tab, sign_in
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.gateway.conftest import engine_specs
from tests.support.gateway import RunningGateway, start_gateway


def priced(spec: ModelSpec) -> ModelSpec:
    """``spec`` at a price that moves the balance by a visible amount per request."""
    return spec.model_copy(update={"pricing": Pricing(per_request="0.25")})


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"], api_key="upstream-secret") as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with start_gateway(
        tmp_path_factory.mktemp("dashboard-flow"),
        specs=[priced(spec) for spec in engine_specs(engine.base_url)],
        secrets={"SCRIPTED_ENGINE_KEY": "upstream-secret"},
        wait_for=["scripted"],
    ) as running:
        yield running


def test_create_a_key_use_it_see_it_revoke_it(gateway: RunningGateway, tab: Tab) -> None:
    page = tab.page
    base = gateway.base_url
    sign_in(tab, base, gateway.key)
    tab.shoot("overview-before")
    balance_before = page.locator("#balance .value").inner_text()

    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("browser test")
    page.get_by_role("button", name="Create key").click()
    new_key = page.locator("#new-key").inner_text().strip()
    assert new_key.startswith("sk-im-")
    assert page.get_by_role("button", name="Copy key").is_visible()  # the script runs
    tab.shoot("key-created")

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=new_key, max_retries=0)
    answer = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "from the dashboard"}]
    )
    assert answer.choices[0].message.content == "echo: from the dashboard"

    page.goto(f"{base}/dashboard/keys")
    assert new_key not in page.content()  # shown once, never again
    tab.shoot("keys")

    page.get_by_role("link", name="Usage").click()
    page.wait_for_selector("table")
    assert page.get_by_role("cell", name="scripted", exact=True).first.is_visible()
    tab.shoot("usage")

    page.get_by_role("link", name="Overview").click()
    assert balance_before == "$100.00"
    assert page.locator("#balance .value").inner_text() == "$99.75"  # one request at $0.25
    tab.shoot("overview")
    page.emulate_media(color_scheme="dark")  # the browser's dark mode
    tab.shoot("overview-dark")
    page.emulate_media(color_scheme="light")

    page.get_by_role("link", name="API keys").click()
    page.get_by_role("link", name="Manage browser test").click()
    page.once("dialog", lambda dialog: dialog.accept())  # "Revoke this key? …"
    page.get_by_role("button", name="Revoke key").click()
    page.wait_for_url(re.compile(r"/dashboard/keys"))
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "after revoking"}]
        )
    tab.assert_clean()
