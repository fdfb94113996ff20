"""The Overview page over real HTTP: a signed-in account's balance, its spend per hour and
per day, its rate limits and the models, after real requests through a scripted engine.

Every figure is read from the page's tables (what a browser without JavaScript shows),
and the chart's numbers from its ``data-chart`` attribute.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from infermesh.billing.money import CreditUnit
from infermesh.billing.pricing import Pricing
from infermesh.catalog.spec import ModelSpec, ServeSpec
from infermesh.gateway.dashboard.format import credits_text, usd_text
from tests.dashboard.test_sessions import assert_no_inline_script, browser, sign_in
from tests.fakes.engine import run_engine
from tests.support.gateway import RunningGateway, create_key, start_gateway

ADMIN_KEY = "adm-overview-secret"
PRICING = Pricing(per_request="0.001", input_per_million="2", output_per_million="6")
TOKENS_PER_DAY = 86_400  # refills one token a second: what is left barely moves in a test
LIMITS = {
    "pro": {"requests_per_minute": 50, "tokens_per_day": TOKENS_PER_DAY, "concurrent_requests": 3}
}
NONE = "\N{EN DASH}"  # a figure that does not apply
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


def catalog(engine_url: str) -> list[ModelSpec]:
    serve = ServeSpec(
        backend="openai",
        engine_model="scripted-1",
        upstream_url=engine_url,
        upstream_key_env="SCRIPTED_ENGINE_KEY",
    )
    return [
        ModelSpec(id="priced", tier="frontier", params="7B", pricing=PRICING, serve=serve),
        ModelSpec(
            id="embed-orphan",
            kind="embedding",
            dimensions=16,
            pricing=Pricing(input_per_million="0.05"),
        ),
        ModelSpec(id="free-orphan", tier="special"),
    ]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with (
        run_engine(models=["scripted-1"], api_key="upstream-secret") as engine,
        start_gateway(
            tmp_path_factory.mktemp("dashboard-overview"),
            specs=catalog(engine.base_url),
            secrets={"SCRIPTED_ENGINE_KEY": "upstream-secret"},
            wait_for=["priced"],
            admin_key=ADMIN_KEY,
            tier_limits=LIMITS,
        ) as running,
    ):
        yield running


class Outline(HTMLParser):
    """What a page shows: the text of each element with an id, the cells of each table
    with an id, and the data of each chart."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self._texts: dict[str, list[str]] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.charts: dict[str, dict[str, Any]] = {}
        self._open: list[str | None] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(html)
        self.close()
        assert not self._open, f"unclosed elements: {self._open}"

    def text(self, ident: str) -> str:
        return " ".join("".join(self._texts[ident]).split())

    def rows(self, table: str) -> list[list[str]]:
        """The table's rows below its header row."""
        return self.tables[table][1:]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        ident = attributes.get("id")
        if "data-chart" in attributes and ident:
            self.charts[ident] = json.loads(attributes["data-chart"] or "")
        if tag in VOID:
            return
        self._open.append(ident)
        if ident:
            self._texts[ident] = []
        if tag == "table" and ident:
            self._table = ident
            self.tables[ident] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("th", "td") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if tag in ("th", "td") and self._cell is not None and self._table:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None
        self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self._texts[ident].append(data)
        if self._cell is not None:
            self._cell.append(data)


def new_key(gateway: RunningGateway, prefix: str, grant: int) -> tuple[str, str]:
    """A new account's name and key, granted ``grant`` micro-USD."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return name, asyncio.run(create_key(gateway.settings, name, grant=grant))


@contextmanager
def signed_in(gateway: RunningGateway, key: str) -> Iterator[httpx.Client]:
    with browser(gateway) as client:
        assert sign_in(client, key).status_code == 303
        yield client


def overview(client: httpx.Client) -> Outline:
    page = client.get("/dashboard/overview")
    assert page.status_code == 200, page.text
    return Outline(page.text)


def chat(gateway: RunningGateway, key: str, text: str) -> tuple[int, int]:
    """One chat request; the tokens it used."""
    with gateway.client(api_key=key) as client:
        answer = client.chat.completions.create(
            model="priced", messages=[{"role": "user", "content": text}]
        )
    assert answer.usage is not None
    return answer.usage.prompt_tokens, answer.usage.completion_tokens


def limit_row(page: Outline, scope: str, name: str) -> list[str]:
    return next(row for row in page.rows("limits") if row[:2] == [scope, name])


def test_the_page_shows_the_balance_in_usd_and_credits(gateway: RunningGateway) -> None:
    _, key = new_key(gateway, "balance", grant=12_345_670)
    with signed_in(gateway, key) as client:
        page = overview(client)
    assert (
        page.text("balance") == "Balance $12.34567 1,234.567 credits All credit the account holds."
    )
    assert page.text("held").startswith("Held $0.00 0 credits")
    assert page.text("available").startswith("Available $12.34567 1,234.567 credits")
    for bucket, label in [("hour", "Last 24 hours"), ("day", "Last 30 days")]:
        assert page.text(f"usage-{bucket}") == f"{label} 0 0 0 0 $0.00 0"
        assert set(page.charts[f"chart-{bucket}"]["requests"]) == {0}


def test_a_chat_request_shows_in_the_last_24_hours_and_30_days(gateway: RunningGateway) -> None:
    grant = 5_000_000
    _, key = new_key(gateway, "spender", grant=grant)
    prompt, completion = chat(gateway, key, "a prompt of forty words " * 8)
    cost = PRICING.cost(prompt, completion)
    with signed_in(gateway, key) as client:
        page = overview(client)
    assert page.text("balance").startswith(f"Balance {usd_text(grant - cost)}")
    spend = f"{usd_text(cost)} {credits_text(cost, CreditUnit())}"
    for bucket, label in [("hour", "Last 24 hours"), ("day", "Last 30 days")]:
        row = f"{label} 1 {prompt} {completion} {prompt + completion} {spend}"
        assert page.text(f"usage-{bucket}") == row
        chart = page.charts[f"chart-{bucket}"]
        assert len(chart["time"]) == {"hour": 25, "day": 31}[bucket]  # both ends partial
        assert chart["time"] == sorted(chart["time"])
        busy = [i for i, requests in enumerate(chart["requests"]) if requests]
        assert len(busy) == 1 and chart["requests"][busy[0]] == 1
        assert chart["tokens"][busy[0]] == prompt + completion
        assert chart["costText"][busy[0]] == usd_text(cost)
        assert chart["cost"][busy[0]] == pytest.approx(cost / 1_000_000)
        table = [row for row in page.rows(f"series-{bucket}") if row[2] != "0"]
        assert [row[1:] for row in table] == [[usd_text(cost), "1", str(prompt + completion)]]
    tokens_left = int(limit_row(page, "Account", "Tokens per day")[3].replace(",", ""))
    assert TOKENS_PER_DAY - (prompt + completion) <= tokens_left < TOKENS_PER_DAY - 20


def test_another_accounts_figures_never_show(gateway: RunningGateway) -> None:
    rich, rich_key = new_key(gateway, "rich", grant=77_654_321)
    chat(gateway, rich_key, "a request of another account entirely " * 3)
    _, key = new_key(gateway, "other", grant=3_210_000)
    with signed_in(gateway, key) as client:
        answer = client.get("/dashboard/overview")
    page = Outline(answer.text)
    assert rich not in answer.text and "77.65" not in answer.text
    assert page.text("balance").startswith("Balance $3.21 321 credits")
    for bucket in ("hour", "day"):
        assert page.text(f"usage-{bucket}").endswith(" 0 0 0 0 $0.00 0")
        chart = page.charts[f"chart-{bucket}"]
        assert set(chart["requests"]) == {0} and set(chart["tokens"]) == {0}


def test_the_limits_and_the_models_are_listed(gateway: RunningGateway) -> None:
    _, key = new_key(gateway, "lister", grant=1_000_000)
    with signed_in(gateway, key) as client:
        page = overview(client)
    assert limit_row(page, "Account", "Requests per minute")[2:4] == ["50", "50"]
    assert limit_row(page, "Account", "Tokens per day")[2:4] == ["86,400", "86,400"]
    assert limit_row(page, "Account", "Requests at once") == [
        "Account",
        "Requests at once",
        "3",
        "3",
        "0 running now",
    ]
    assert page.rows("models") == [
        ["priced 7B", "chat", "frontier", "4,096", "$2", "$6", "$0.001", "available"],
        ["embed-orphan", "embedding", "fast", "4,096", "$0.05", NONE, "$0", "unavailable"],
        ["free-orphan", "chat", "special", "4,096", "free", "unavailable"],
    ]


def test_the_page_is_strict_and_loads_only_its_own_files(gateway: RunningGateway) -> None:
    _, key = new_key(gateway, "strict", grant=1_000_000)
    with signed_in(gateway, key) as client:
        answer = client.get("/dashboard/overview")
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "style-src 'self'" in policy
        assert "'unsafe-inline'" not in policy
        assert_no_inline_script(answer.text)
        assert ' style="' not in answer.text
        for path, kind in [
            ("/dashboard/static/vendor/uPlot.iife.min.js", "javascript"),
            ("/dashboard/static/vendor/uPlot.min.css", "css"),
            ("/dashboard/static/overview.js", "javascript"),
            ("/dashboard/static/overview.css", "css"),
        ]:
            assert f'"{path}"' in answer.text
            asset = client.get(path)
            assert asset.status_code == 200 and kind in asset.headers["content-type"]


def test_the_page_is_an_accounts(gateway: RunningGateway) -> None:
    with browser(gateway) as client:
        signed_out = client.get("/dashboard/overview")
        assert signed_out.status_code == 303
        assert signed_out.headers["location"].startswith("/dashboard/sign-in?next=")
        assert sign_in(client, ADMIN_KEY).status_code == 303
        admin = client.get("/dashboard/overview")
    assert admin.status_code == 403 and "account" in admin.text
    assert "content-security-policy" in admin.headers


def test_usd_and_credits_are_written_exactly() -> None:
    assert usd_text(0) == "$0.00"
    assert usd_text(1_234_500_000) == "$1,234.50"
    assert usd_text(125) == "$0.000125"
    unit = CreditUnit(10_000)
    assert credits_text(12_500_000, unit) == "1,250"
    assert credits_text(125, unit) == "0.0125"
    assert credits_text(1, unit) == "0.0001"
