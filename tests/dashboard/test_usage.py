"""The Usage page over real HTTP: an account's request records, filtered, paged and
exported as CSV; nobody else's; bad filters answered as 400 pages.

One gateway on the scripted engine; the account "tester" makes requests of every kind
(plain, streamed, failed, through the Responses API, with a second key, with a
formula-like request id) once, and every test reads them.
"""

from __future__ import annotations

import asyncio
import csv
import html
import io
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from infermesh.gateway.dashboard.pages.usage import CSV_COLUMNS, PAGE_SIZE, csv_cell
from tests.dashboard.test_sessions import assert_no_inline_script, browser, sign_in
from tests.fakes.engine import run_engine
from tests.gateway.conftest import ENGINE_MODELS, engine_specs
from tests.support.gateway import RunningGateway, create_key, start_gateway
from tests.support.waiting import wait_until

ADMIN_KEY = "adm-usage-page-secret"
PLAIN_REQUESTS = PAGE_SIZE - 1
FORMULA_ID = "-2-3"  # a client's own x-request-id, kept by the gateway
ROW = re.compile(r'<tr id="record-([^"]+)">(.*?)</tr>', re.S)
CELL = re.compile(r"<td[^>]*>(.*?)</td>", re.S)
NEXT = re.compile(r'<a href="([^"]+)" rel="next">')


@dataclass
class Made:
    """The tester's requests, as ``GET /v1/usage`` lists them (newest first)."""

    records: list[dict[str, Any]]

    def ids(self, **where: Any) -> list[str]:
        return [
            record["id"]
            for record in self.records
            if all(record[name] == value for name, value in where.items())
        ]

    def one(self, **where: Any) -> dict[str, Any]:
        (found,) = (record for record in self.records if record["id"] in self.ids(**where))
        return found


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with (
        run_engine(models=["scripted-1"], api_key="upstream-secret") as engine,
        start_gateway(
            tmp_path_factory.mktemp("dashboard-usage"),
            specs=engine_specs(engine.base_url),
            secrets={"SCRIPTED_ENGINE_KEY": "upstream-secret"},
            wait_for=ENGINE_MODELS,
            admin_key=ADMIN_KEY,
        ) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def made(gateway: RunningGateway) -> Made:
    client = gateway.client()
    hello: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda _: client.chat.completions.create(model="scripted", messages=hello),
                range(PLAIN_REQUESTS),
            )
        )
    for chunk in client.chat.completions.create(model="scripted", messages=hello, stream=True):
        assert chunk is not None
    client.chat.completions.create(
        model="scripted-plain", messages=hello, extra_headers={"x-request-id": FORMULA_ID}
    )
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="scripted-broken", messages=hello)
    client.responses.create(model="scripted", input="hello there")
    second_key = asyncio.run(create_key(gateway.settings, "tester", grant=0))
    gateway.client(api_key=second_key).chat.completions.create(model="scripted", messages=hello)
    expected = PLAIN_REQUESTS + 5
    with gateway.http() as http:
        wait_until(
            lambda: len(api_usage(http, gateway.key, limit=100)) == expected,
            timeout=20,
            what=f"{expected} usage records",
        )
        return Made(api_usage(http, gateway.key, limit=100))


def api_usage(http: httpx.Client, key: str, **params: Any) -> list[dict[str, Any]]:
    answer = http.get("/v1/usage", params=params, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def rows(page: str) -> dict[str, list[str]]:
    """The page's table: each record's id and the text of its cells, in order."""
    return {
        record_id: [
            " ".join(html.unescape(re.sub(r"<[^>]+>", " ", cell)).split())
            for cell in CELL.findall(body)
        ]
        for record_id, body in ROW.findall(page)
    }


def next_link(page: str) -> str | None:
    found = NEXT.search(page)
    return html.unescape(found.group(1)) if found else None


def all_pages(client: httpx.Client, path: str) -> list[str]:
    """The record ids of every page, following the "next page" links from ``path``."""
    ids: list[str] = []
    target: str | None = path
    while target is not None:
        answer = client.get(target)
        assert answer.status_code == 200, answer.text
        ids.extend(rows(answer.text))
        target = next_link(answer.text)
    return ids


@contextmanager
def signed_in(gateway: RunningGateway, key: str) -> Iterator[httpx.Client]:
    with browser(gateway) as client:
        assert sign_in(client, key).status_code == 303
        yield client


def read_csv(answer: httpx.Response) -> list[list[str]]:
    assert answer.status_code == 200, answer.text
    return list(csv.reader(io.StringIO(answer.text)))


def test_records_appear_with_their_columns_newest_first(
    gateway: RunningGateway, made: Made
) -> None:
    with signed_in(gateway, gateway.key) as client:
        answer = client.get("/dashboard/usage")
    assert answer.status_code == 200
    shown = rows(answer.text)
    assert list(shown) == [record["id"] for record in made.records[:PAGE_SIZE]]
    for record in made.records[:PAGE_SIZE]:
        time, model, endpoint, tokens_in, tokens_out, cost, worker, status, latency, stream = shown[
            record["id"]
        ]
        assert time == f"{datetime.fromtimestamp(record['created'], UTC):%Y-%m-%d %H:%M:%S} UTC"
        assert (model, endpoint) == (record["model"], record["endpoint"])
        assert (tokens_in, tokens_out) == (
            str(record["prompt_tokens"]),
            str(record["completion_tokens"]),
        )
        assert cost == record["cost"]["usd"]
        assert worker == (record["node_id"] or "none")
        assert status == " ".join(filter(None, [record["status"], record["error_code"]]))
        assert (latency, stream) == (
            f"{record['latency_ms']} ms",
            "yes" if record["stream"] else "no",
        )
    failed = made.one(status="failed")
    assert failed["error_code"] and shown[failed["id"]][7] == f"failed {failed['error_code']}"
    assert shown[made.one(stream=True)["id"]][9] == "yes"
    assert shown[made.one(endpoint="responses")["id"]][2] == "responses"
    assert shown[made.records[0]["id"]][6] != "none"  # served by a worker: its node id


def test_filters_narrow_the_records(gateway: RunningGateway, made: Made) -> None:
    second_key_id = made.records[0]["key_id"]  # the second key made the newest request
    cases = {
        "model=scripted-plain": made.ids(model="scripted-plain"),
        "status=failed": made.ids(status="failed"),
        "endpoint=responses": made.ids(endpoint="responses"),
        f"key_id={second_key_id}": made.ids(key_id=second_key_id),
        "model=scripted&endpoint=responses&status=succeeded": made.ids(endpoint="responses"),
        "model=scripted-plain&status=failed": [],
        "model=nothing-like-it&range=30d": [],
        "model=&status=&endpoint=&key_id=&range=": made.ids()[:PAGE_SIZE],  # empty: no filter
    }
    with signed_in(gateway, gateway.key) as client:
        for query, expected in cases.items():
            assert list(rows(client.get(f"/dashboard/usage?{query}").text)) == expected, query
        page = client.get("/dashboard/usage?status=failed&range=hour").text
    assert len(made.ids(key_id=second_key_id)) == 1
    assert '<option value="failed" selected>' in page  # the form shows what is applied
    assert '<option value="hour" selected>' in page


def test_paging_shows_every_record_once_and_keeps_the_filters(
    gateway: RunningGateway, made: Made
) -> None:
    assert len(made.records) > PAGE_SIZE
    with signed_in(gateway, gateway.key) as client:
        everything = all_pages(client, "/dashboard/usage")
        first = client.get("/dashboard/usage?status=succeeded&range=24h").text
        link = next_link(first)
        succeeded = all_pages(client, "/dashboard/usage?status=succeeded&range=24h")
    assert everything == [record["id"] for record in made.records]  # no duplicate, no gap
    assert link is not None and "status=succeeded" in link and "range=24h" in link
    assert "after=" in link
    assert succeeded == made.ids(status="succeeded")


def test_the_csv_export_has_the_same_records_and_a_header(
    gateway: RunningGateway, made: Made
) -> None:
    with signed_in(gateway, gateway.key) as client:
        answer = client.get("/dashboard/usage.csv")
        failed_only = read_csv(client.get("/dashboard/usage.csv?status=failed&range=7d"))
        page = client.get("/dashboard/usage?status=failed&range=7d").text
    assert answer.headers["content-type"].startswith("text/csv")
    disposition = answer.headers["content-disposition"]
    assert disposition.startswith("attachment;") and ".csv" in disposition
    assert answer.headers["cache-control"] == "no-store"
    table = read_csv(answer)
    header, body = table[0], table[1:]
    assert tuple(header) == CSV_COLUMNS
    by_column = [dict(zip(header, row, strict=True)) for row in body]
    assert [row["id"] for row in by_column] == [record["id"] for record in made.records]
    for row, record in zip(by_column, made.records, strict=True):
        assert row["model"] == record["model"] and row["status"] == record["status"]
        assert int(row["cost_micro_usd"]) == record["cost"]["micro_usd"]
        assert int(row["total_tokens"]) == record["total_tokens"]
    formula = next(row for row in by_column if row["model"] == "scripted-plain")
    assert formula["request_id"] == "'" + FORMULA_ID  # a spreadsheet shows it as text
    assert [row[1] for row in failed_only[1:]] == made.ids(status="failed")
    assert "usage.csv?status=failed&amp;range=7d" in page  # the link keeps the filters
    assert "100,000" in page  # the cap is stated


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\uff1d1", "'\uff1d1"),
        ("scripted-1", "scripted-1"),
        ("a=b", "a=b"),
        ("", ""),
        (None, ""),
        (42, "42"),
        (True, "true"),
    ],
)
def test_csv_cells_never_start_like_a_formula(value: str | int | None, cell: str) -> None:
    assert csv_cell(value) == cell


def test_another_account_sees_none_of_them(gateway: RunningGateway, made: Made) -> None:
    stranger = asyncio.run(create_key(gateway.settings, "usage-stranger"))
    someone_elses = made.records[0]
    with signed_in(gateway, stranger) as client:
        page = client.get("/dashboard/usage")
        by_key = client.get(f"/dashboard/usage?key_id={someone_elses['key_id']}")
        exported = read_csv(client.get("/dashboard/usage.csv"))
        paged_after = client.get(f"/dashboard/usage?after={someone_elses['id']}")
    assert page.status_code == 200 and rows(page.text) == {}
    assert "No requests match" in page.text
    assert rows(by_key.text) == {}
    assert exported == [list(CSV_COLUMNS)]
    assert paged_after.status_code == 400  # not a cursor of this account
    for record in made.records:
        assert record["id"] not in page.text + by_key.text


@pytest.mark.parametrize(
    "query",
    ["status=bogus", "range=forever", "endpoint=files", "model=" + "m" * 201, "after=nothing"],
)
def test_a_bad_filter_is_a_400_page(gateway: RunningGateway, query: str) -> None:
    paths = (
        ["/dashboard/usage"]
        if query.startswith("after")
        else ["/dashboard/usage", "/dashboard/usage.csv"]
    )
    with signed_in(gateway, gateway.key) as client:
        for path in paths:
            answer = client.get(f"{path}?{query}")
            assert answer.status_code == 400, (path, query, answer.text)
            assert answer.headers["content-type"].startswith("text/html")
            assert "content-security-policy" in answer.headers
            assert "That did not work" in answer.text


def test_the_admin_has_no_usage_page(gateway: RunningGateway) -> None:
    with signed_in(gateway, ADMIN_KEY) as client:
        for path in ("/dashboard/usage", "/dashboard/usage.csv"):
            answer = client.get(path)
            assert answer.status_code == 403 and "admin" in answer.text


def test_the_page_is_under_the_policy_without_inline_script(
    gateway: RunningGateway, made: Made
) -> None:
    with signed_in(gateway, gateway.key) as client:
        answer = client.get("/dashboard/usage")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert_no_inline_script(answer.text)


def test_the_api_takes_the_same_filters(gateway: RunningGateway, made: Made) -> None:
    newest = made.records[0]
    created = newest["created"]
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"status": "failed"}, made.ids(status="failed")),
        ({"model": "scripted-plain"}, made.ids(model="scripted-plain")),
        ({"endpoint": "responses"}, made.ids(endpoint="responses")),
        ({"key_id": newest["key_id"]}, [newest["id"]]),
        ({"since": created + 3600}, []),
        ({"since": 0, "until": created + 1}, [record["id"] for record in made.records]),
        ({"until": made.records[-1]["created"]}, []),
    ]
    with gateway.http() as http:
        for params, expected in cases:
            listed = api_usage(http, gateway.key, limit=100, **params)
            assert [record["id"] for record in listed] == expected, params
        auth = {"Authorization": f"Bearer {gateway.key}"}
        for bad in ({"status": "bogus"}, {"since": 10, "until": 5}, {"since": 10**13}):
            answer = http.get("/v1/usage", params=bad, headers=auth)
            assert answer.status_code == 400, (bad, answer.text)
            assert answer.json()["error"]["type"] == "invalid_request_error"
