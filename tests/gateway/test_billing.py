"""Billing end to end over real HTTP: holds, exact charges, refusals, failures, disconnects.

One scripted engine (and a slow one) behind one gateway with priced models; each test
pays from its own account. Expected costs are computed here by hand, in micro-USD.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from infermesh.accounts.service import AccountService
from infermesh.billing.ledger import CreditLedger
from infermesh.billing.records import BalanceRecord, EntryRecord
from infermesh.catalog.spec import ModelSpec
from infermesh.config import Settings
from infermesh.store.database import Database
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.gateway.test_chat_engine import WEATHER_TOOL
from tests.support.gateway import RunningGateway, create_key, start_gateway
from tests.support.waiting import wait_until

IN_PER_MILLION = 350_000  # "0.35" USD per million prompt tokens, in micro-USD
OUT_PER_MILLION = 1_250_000  # "1.25" USD per million completion tokens
FLAT = 10_000  # "0.01" USD per request
FLOOR = 2_000  # "0.002" USD minimum per request
PER_TOKEN = {"input_per_million": "0.35", "output_per_million": "1.25", "minimum": "0"}
WITH_FLOOR = {"input_per_million": "1", "output_per_million": "1", "minimum": "0.002"}
GRANT = 5_000_000
SECRETS = {"SCRIPTED_ENGINE_KEY": "upstream-secret"}


def token_cost(prompt_tokens: int, completion_tokens: int) -> int:
    """The per-token price of these counts, rounded up to a whole micro-USD."""
    return -(-(prompt_tokens * IN_PER_MILLION + completion_tokens * OUT_PER_MILLION) // 10**6)


def priced(
    model_id: str, pricing: dict[str, str], engine_url: str | None, **fields: str
) -> ModelSpec:
    """A priced model on the scripted engine at ``engine_url`` (None: served by nobody);
    ``fields`` may set its ``tier`` and ``engine_model``."""
    serve = {
        "backend": "openai",
        "engine_model": fields.pop("engine_model", "scripted-1"),
        "upstream_url": engine_url,
        "upstream_key_env": "SCRIPTED_ENGINE_KEY",
    }
    spec = {"id": model_id, "context_length": 8192, "capabilities": {"tools": True}, **fields}
    return ModelSpec.model_validate(
        {**spec, "pricing": pricing, "serve": serve if engine_url else None}
    )


SERVED = ["metered", "flat", "floor", "premium", "pricey", "broken", "metered-slow"]


@pytest.fixture(scope="module")
def slow_engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"], api_key="upstream-secret", chunk_delay=0.1) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine, slow_engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    url = engine.base_url
    specs = [
        priced("metered", PER_TOKEN, url),
        priced("flat", {"per_request": "0.01"}, url),
        priced("floor", WITH_FLOOR, url),
        priced("premium", PER_TOKEN, url, tier="frontier"),
        priced("pricey", {"output_per_million": "1000"}, url),
        priced("broken", PER_TOKEN, url, engine_model="fail-500"),
        priced("unserved", PER_TOKEN, None),
        priced("metered-slow", PER_TOKEN, slow_engine.base_url),
    ]
    with start_gateway(
        tmp_path_factory.mktemp("billing"), specs=specs, secrets=SECRETS, wait_for=SERVED
    ) as running:
        yield running


@dataclass
class Customer:
    """An account of its own on the gateway, with a key and a starting grant."""

    gateway: RunningGateway
    name: str
    key: str
    grant: int

    @classmethod
    def create(cls, gateway: RunningGateway, *, grant: int = GRANT, tier: str = "pro") -> Customer:
        name = f"customer-{uuid.uuid4().hex[:12]}"
        key = asyncio.run(create_key(gateway.settings, name, tier=tier, grant=grant))
        return cls(gateway, name, key, grant)

    def client(self) -> OpenAI:
        return self.gateway.client(api_key=self.key)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, **params: Any) -> httpx.Response:
        with self.gateway.http() as http:
            return http.get(path, params=params, headers=self.auth())

    def json(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        return response.json()

    def balance(self) -> tuple[int, int]:
        """(balance, held) in micro-USD, as ``GET /v1/credits/balance`` shows them."""
        body = self.json("/v1/credits/balance")
        balance, held, available = (body[k]["micro_usd"] for k in ("balance", "held", "available"))
        assert available == balance - held
        return balance, held

    def usage(self, record_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self.json(f"/v1/usage/{record_id}")
        return record

    def records(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.json("/v1/usage", limit=100)["data"]
        return data


Ledger = tuple[BalanceRecord, BalanceRecord, list[EntryRecord]]


def read_ledger(settings: Settings, account: str) -> Ledger:
    """The account's cached balance, the balance summed from its ledger entries, and its
    newest entries, read from the database itself."""

    async def read() -> Ledger:
        database = Database(settings.resolved_database_url)
        try:
            account_id = (await AccountService(database).get_account(account)).id
            ledger = CreditLedger(database)
            return (
                await ledger.balance(account_id),
                await ledger.ledger_totals(account_id),
                await ledger.entries(account_id),
            )
        finally:
            await database.dispose()

    return asyncio.run(read())


def cost_of(usage: Any) -> int:
    extra = usage.model_extra or {}
    assert extra["cost"] == extra["cost_micro_usd"] / 1_000_000
    cost: int = extra["cost_micro_usd"]
    return cost


def hello(text: str = "hello there") -> list[Any]:
    return [{"role": "user", "content": text}]


def test_per_token_pricing_is_charged_exactly(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway)
    raw = customer.client().chat.completions.with_raw_response.create(
        model="metered", messages=hello("what does this cost me today"), max_tokens=64
    )
    completion = raw.parse()
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (6, 7)
    expected = token_cost(6, 7)
    assert expected == 11  # ceil((6 * 350_000 + 7 * 1_250_000) / 1e6) = ceil(10.85)
    assert cost_of(completion.usage) == expected
    assert raw.headers["x-infermesh-cost-micro-usd"] == str(expected)
    assert raw.headers["x-infermesh-balance-micro-usd"] == str(GRANT - expected)
    assert raw.headers["x-infermesh-available-micro-usd"] == str(GRANT - expected)
    assert customer.balance() == (GRANT - expected, 0)
    record = customer.usage(completion.id)
    assert record["status"] == "succeeded"
    assert record["cost"]["micro_usd"] == expected
    assert (record["prompt_tokens"], record["completion_tokens"]) == (6, 7)
    assert customer.usage(raw.headers["x-request-id"])["id"] == completion.id


def test_flat_and_minimum_prices_do_not_follow_the_tokens(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway)
    client = customer.client()
    short = client.chat.completions.create(model="flat", messages=hello("hi"))
    long = client.chat.completions.create(model="flat", messages=hello("word " * 300))
    tool_step = client.chat.completions.create(
        model="flat", messages=hello("weather in Paris please"), tools=[WEATHER_TOOL]
    )
    assert tool_step.choices[0].finish_reason == "tool_calls"
    assert tool_step.choices[0].message.tool_calls
    for completion in (short, long, tool_step):
        assert completion.usage is not None
        assert cost_of(completion.usage) == FLAT
    assert long.usage is not None and long.usage.prompt_tokens == 300
    floor = client.chat.completions.create(model="floor", messages=hello())  # 2 + 3 tokens
    assert floor.usage is not None and cost_of(floor.usage) == FLOOR
    assert customer.balance() == (GRANT - 3 * FLAT - FLOOR, 0)


def test_stream_reports_its_cost_in_the_final_usage_chunk(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway)
    raw = customer.client().chat.completions.with_raw_response.create(
        model="metered",
        messages=hello("stream me some words please"),
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    held = int(raw.headers["x-infermesh-hold-micro-usd"])
    assert held >= token_cost(0, 50)
    assert int(raw.headers["x-infermesh-available-micro-usd"]) == GRANT - held
    chunks = list(raw.parse())
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (5, 6)
    assert cost_of(final.usage) == token_cost(5, 6)
    assert customer.balance() == (GRANT - token_cost(5, 6), 0)
    assert customer.usage(final.id)["status"] == "succeeded"


def test_tier_refusal_is_402_and_dispatches_nothing(
    gateway: RunningGateway, engine: ScriptedEngine
) -> None:
    customer = Customer.create(gateway, tier="free")
    sent = len(engine.requests)
    with pytest.raises(openai.APIStatusError) as caught:
        customer.client().chat.completions.create(model="premium", messages=hello())
    assert caught.value.status_code == 402
    assert caught.value.code == "tier_exceeded"
    assert caught.value.type == "insufficient_quota"
    assert len(engine.requests) == sent
    assert customer.records() == []
    assert customer.balance() == (GRANT, 0)


def test_insufficient_credits_is_402_and_dispatches_nothing(
    gateway: RunningGateway, engine: ScriptedEngine
) -> None:
    customer = Customer.create(gateway, grant=1_000)
    sent = len(engine.requests)
    with pytest.raises(openai.APIStatusError) as caught:  # holds 8192 tokens of output
        customer.client().chat.completions.create(model="metered", messages=hello())
    error = caught.value
    assert error.status_code == 402
    assert (error.code, error.type) == ("insufficient_credits", "insufficient_quota")
    assert error.response.headers["x-request-id"]
    assert "max_tokens" in error.message
    assert len(engine.requests) == sent
    assert customer.records() == []
    assert customer.balance() == (1_000, 0)
    small = customer.client().chat.completions.create(
        model="metered", messages=hello(), max_tokens=5
    )
    assert small.usage is not None
    assert customer.balance() == (1_000 - cost_of(small.usage), 0)


def test_failed_requests_cost_nothing(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway)
    client = customer.client()
    with pytest.raises(openai.APIStatusError) as broken:
        client.chat.completions.create(model="broken", messages=hello())
    with pytest.raises(openai.APIStatusError) as unserved:
        client.chat.completions.create(model="unserved", messages=hello())
    with pytest.raises(openai.APIStatusError) as broken_stream:
        client.chat.completions.create(model="broken", messages=hello(), stream=True)
    assert broken.value.status_code == broken_stream.value.status_code == 502
    assert unserved.value.status_code == 503
    assert customer.balance() == (GRANT, 0)
    records = {record["model"] + str(record["stream"]): record for record in customer.records()}
    assert set(records) == {"brokenFalse", "brokenTrue", "unservedFalse"}
    for record in records.values():
        assert record["status"] == "failed"
        assert record["cost"]["micro_usd"] == 0
    assert records["unservedFalse"]["error_code"] == "no_worker_available"


def disconnect_after(customer: Customer, words: int, *, chunks: int) -> str:
    """Stream ``metered-slow`` on a prompt of ``words`` words, read ``chunks`` content
    chunks, then hang up; the completion id."""
    body = {"model": "metered-slow", "messages": hello(" ".join(["w"] * words)), "stream": True}
    seen: list[dict[str, Any]] = []
    with (
        customer.gateway.http() as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=customer.auth()) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                seen.append(json.loads(line.removeprefix("data: ")))
            if sum(1 for chunk in seen if chunk["choices"][0]["delta"].get("content")) >= chunks:
                break
    completion_id: str = seen[0]["id"]
    return completion_id


def wait_for_status(customer: Customer, record_id: str, status: str) -> dict[str, Any]:
    def recorded() -> bool:
        return customer.get(f"/v1/usage/{record_id}").status_code == 200

    wait_until(recorded, timeout=30, what=f"a usage record for {record_id}")
    record = customer.usage(record_id)
    assert record["status"] == status, record
    return record


def test_client_disconnect_charges_the_tokens_counted_so_far(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway)
    completion_id = disconnect_after(customer, 80, chunks=3)
    record = wait_for_status(customer, completion_id, "cancelled")
    assert record["error_code"] == "client_disconnected"
    assert 0 < record["completion_tokens"] < 81  # the whole answer is "echo:" and 80 words
    assert record["prompt_tokens"] > 0
    expected = token_cost(record["prompt_tokens"], record["completion_tokens"])
    assert record["cost"]["micro_usd"] == expected > 0
    assert customer.balance() == (GRANT - expected, 0)


def test_a_non_streamed_request_abandoned_by_its_client_stops_and_charges_so_far(
    gateway: RunningGateway, slow_engine: ScriptedEngine
) -> None:
    customer = Customer.create(gateway)
    request_id = f"abandon-{uuid.uuid4().hex[:12]}"
    body = {"model": "metered-slow", "messages": hello(" ".join(["w"] * 80))}  # ~8 s answer
    gone_before = slow_engine.disconnects
    headers = {**customer.auth(), "x-request-id": request_id}
    with customer.gateway.http() as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=body, headers=headers, timeout=1.5)
    record = wait_for_status(customer, request_id, "cancelled")
    assert record["error_code"] == "client_disconnected"
    assert 0 < record["completion_tokens"] < 40  # stopped long before its 81 tokens
    expected = token_cost(record["prompt_tokens"], record["completion_tokens"])
    assert record["cost"]["micro_usd"] == expected > 0
    assert customer.balance() == (GRANT - expected, 0)
    wait_until(lambda: slow_engine.disconnects > gone_before, what="the engine told to stop")


def test_ledger_adds_up_to_the_balance_after_a_mixed_workload(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway)
    client = customer.client()
    client.chat.completions.create(model="metered", messages=hello("one two three"))
    list(client.chat.completions.create(model="flat", messages=hello(), stream=True))
    for model, status in (("broken", 502), ("unserved", 503), ("pricey", 402)):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model=model, messages=hello())
        assert caught.value.status_code == status
    cancelled = disconnect_after(customer, 40, chunks=2)
    wait_for_status(customer, cancelled, "cancelled")
    spent = sum(record["cost"]["micro_usd"] for record in customer.records())
    # The gateway gives its credit slice back once the account has been idle a moment.
    wait_until(
        lambda: read_ledger(gateway.settings, customer.name)[0].held == 0,
        timeout=20,
        what="the gateway gave its credit slice back",
    )
    cached, summed, _ = read_ledger(gateway.settings, customer.name)
    assert summed == cached
    assert (cached.balance, cached.held) == (GRANT - spent, 0)
    assert customer.balance() == (GRANT - spent, 0)
    assert len(customer.records()) == 5  # the 402 never got as far as a record


def test_usage_pages_and_holds_no_content(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway)
    secret = f"zanzibar-{uuid.uuid4().hex}"
    client = customer.client()
    made = [
        client.chat.completions.create(model="metered", messages=hello(f"{secret} {i}")).id
        for i in range(5)
    ]
    first = customer.json("/v1/usage", limit=2)
    second = customer.json("/v1/usage", limit=2, after=first["last_id"])
    third = customer.json("/v1/usage", limit=2, after=second["last_id"])
    pages = [first, second, third]
    assert [len(page["data"]) for page in pages] == [2, 2, 1]
    assert [page["has_more"] for page in pages] == [True, True, False]
    assert [page["last_id"] for page in pages] == [page["data"][-1]["id"] for page in pages]
    listed = [record["id"] for page in pages for record in page["data"]]
    assert listed == list(reversed(made))  # newest first
    assert secret not in json.dumps(pages)
    assert secret not in customer.get(f"/v1/usage/{made[0]}").text
    stranger = Customer.create(gateway)
    assert stranger.get(f"/v1/usage/{made[0]}").status_code == 404
    assert stranger.get("/v1/usage", after=made[0]).status_code == 400
