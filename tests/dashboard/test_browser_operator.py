"""A GPU operator's day in a real browser: sign in, create a worker token on the Workers
page, start a real ``infermesh worker`` process with it (on the scripted engine), see the
worker come online, see its earnings grow as another account's requests are served; then
queue async jobs, read a result on the Jobs page and cancel a waiting job. Screenshots of
the pages at desktop and phone width go to ``docs/screenshots/``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from infermesh.catalog.spec import ModelSpec
from tests.dashboard.browser import Tab, sign_in
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.mesh.helpers import HEARTBEAT, openai_worker, run_worker
from tests.support.gateway import RunningGateway, create_key, start_gateway

OPERATOR = "gpu-operator"
PRICE = "0.05"  # USD a request: the operator earns 80% of it
REQUESTS = 3


@dataclass
class Network:
    gateway: RunningGateway
    engine: ScriptedEngine
    operator_key: str


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    flat = {"tier": "frontier", "pricing": {"per_request": PRICE}}
    specs = [
        ModelSpec.model_validate({"id": "remote-paid", **flat}),
        ModelSpec.model_validate({"id": "unserved", **flat}),
    ]
    with (
        run_engine(models=["scripted-1"]) as engine,
        start_gateway(
            tmp_path_factory.mktemp("dashboard-operator"),
            specs=specs,
            embedded_worker=False,
            **HEARTBEAT,
        ) as gateway,
    ):
        operator_key = asyncio.run(create_key(gateway.settings, OPERATOR))
        yield Network(gateway, engine, operator_key)


def reload_until(page: Page, locator: Locator, text: str, *, timeout: float = 20) -> None:
    """Reload ``page`` until ``locator`` shows ``text``, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        page.reload()
        try:
            expect(locator).to_have_text(text, timeout=500)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def enqueue(network: Network, model: str, text: str) -> str:
    headers = {"Authorization": f"Bearer {network.operator_key}", "Prefer": "respond-async"}
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    with network.gateway.http() as http:
        answer = http.post("/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def test_an_operator_sees_its_worker_go_online_and_its_earnings_grow(
    network: Network, tab: Tab, tmp_path: Path
) -> None:
    page = tab.page
    base = network.gateway.base_url
    sign_in(tab, base, network.operator_key)
    page.get_by_role("link", name="Workers").click()
    expect(page.get_by_role("heading", name="Become an operator")).to_be_visible()
    page.get_by_label("Worker name").fill("gpu-box-1")
    page.get_by_role("button", name="Create worker token").click()
    token = page.locator("#new-token").inner_text().strip()
    assert token.startswith("wt-im-")
    expect(page.locator("#worker-command")).to_contain_text(
        f"infermesh worker --gateway {base} --token {token}"
    )
    expect(page.get_by_role("button", name="Copy command")).to_be_visible()  # the script runs
    tab.shoot("worker-token-created")

    options = openai_worker(network.engine, "remote-paid")
    with run_worker(base, *options, token=token, data_dir=tmp_path) as worker:
        page.goto(f"{base}/dashboard/workers")
        assert token not in page.content()  # shown once, never again
        row = page.locator("#workers tbody tr").filter(has_text="gpu-box-1")
        reload_until(page, row.locator(".worker-status"), "online")
        expect(row).to_contain_text(worker.node_id)
        expect(row).to_contain_text("remote-paid (4 slots)")
        expect(page.locator("#earned .value")).to_have_text("$0.00")

        client = network.gateway.client()  # another account's key
        for number in range(REQUESTS):
            answer = client.chat.completions.create(
                model="remote-paid", messages=[{"role": "user", "content": f"request {number}"}]
            )
            assert answer.metadata == {"node_id": worker.node_id}
        reload_until(page, page.locator("#earned .value"), "$0.12")  # 80% of 3 x $0.05
        reload_until(page, row.locator("td.num").first, str(REQUESTS))  # served
        expect(row.locator(".worker-earned")).to_have_text("$0.12")
        expect(page.locator("#chart-earnings canvas").first).to_be_visible()  # uPlot drew it
        tab.shoot("workers")

        done = enqueue(network, "remote-paid", "a job for later")
        waiting = enqueue(network, "unserved", "nobody serves this")
        page.get_by_role("link", name="Jobs").click()
        reload_until(page, page.locator(f"#job-{done} .badge"), "complete")
        expect(page.locator(f"#job-{waiting}")).to_contain_text("unserved")
        tab.shoot("jobs")

    page.get_by_role("link", name=f"Result of job {done}").click()
    expect(page.locator("#answer")).to_have_text("echo: a job for later")
    expect(page.locator("#result-json")).to_contain_text('"object": "chat.completion"')
    tab.shoot("job-result")

    page.get_by_role("link", name="← Jobs").click()
    page.once("dialog", lambda dialog: dialog.accept())  # "Cancel this job? …"
    page.get_by_role("button", name=f"Cancel job {waiting}").click()
    page.wait_for_url(f"**/dashboard/jobs/{waiting}?notice=*")
    reload_until(page, page.locator("#job-status"), "cancelled")
    tab.assert_clean()
