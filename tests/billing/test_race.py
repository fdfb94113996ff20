"""Many concurrent requests against a balance for only a few: holds are atomic.

An account with credit for exactly K requests fires many more at once through a real
gateway, or through three gateways on one database (the official openai SDK, from
threads): at most K succeed, the rest get 402, and the balance ends at deposits minus
charges exactly, never below zero. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from infermesh.accounts import AccountService
from infermesh.billing.ledger import CreditLedger, InsufficientCredits
from infermesh.billing.pricing import Pricing, token_bound
from infermesh.billing.records import BalanceRecord, Settlement, UsageRow
from infermesh.catalog.spec import ModelSpec, ServeSpec
from infermesh.config import Settings
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.store import Database, LedgerEntry, utcnow
from tests.billing.conftest import NewAccount
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.support.gateway import RunningGateway, create_key, start_gateway
from tests.support.invariants import wait_written

K = 5
REQUESTS = 25
FLAT_PRICE = 10_000  # "0.01" USD
PER_TOKEN = Pricing(input_per_million="1", output_per_million="2")  # 1 and 2 micro-USD a token
MAX_TOKENS = 8
MESSAGES = [{"role": "user", "content": "hello world"}]
# The scripted engine counts 2 prompt tokens and answers "echo: hello world" (3 tokens).
PER_TOKEN_COST = 2 * 1 + 3 * 2


def _spec(model_id: str, pricing: Pricing, engine: ScriptedEngine) -> ModelSpec:
    serve = ServeSpec(
        backend="openai",
        engine_model="scripted-1",
        upstream_url=engine.base_url,
        upstream_key_env="SCRIPTED_ENGINE_KEY",
    )
    return ModelSpec(
        id=model_id, tier="frontier", context_length=8192, pricing=pricing, serve=serve
    )


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"], api_key="upstream-secret", chunk_delay=0.02) as running:
        yield running


@dataclass
class SeveralGateways:
    """Gateways on one database, used as one: each client talks to the next gateway,
    and a read over HTTP waits until every gateway has written its settlements (they
    are written in batches, tens of milliseconds after each request)."""

    gateways: list[RunningGateway]
    turn: Iterator[int] = field(default_factory=itertools.count)

    @property
    def settings(self) -> Settings:
        return self.gateways[0].settings

    def client(self, **options: Any) -> openai.OpenAI:
        return self.gateways[next(self.turn) % len(self.gateways)].client(**options)

    def http(self) -> httpx.Client:
        for gateway in self.gateways:
            wait_written(gateway)
        return self.gateways[0].http()


@pytest.fixture(params=[1, 3], ids=["one-gateway", "three-gateways"])
def gateway(
    request: pytest.FixtureRequest,
    engine: ScriptedEngine,
    gateway_database_url: str | None,
    tmp_path: Path,
) -> Iterator[RunningGateway | SeveralGateways]:
    specs = [
        _spec("flat", Pricing(per_request="0.01"), engine),
        _spec("per-token", PER_TOKEN, engine),
    ]
    options: dict[str, Any] = {
        "specs": specs,
        "secrets": {"SCRIPTED_ENGINE_KEY": "upstream-secret"},
        "wait_for": ["flat", "per-token"],
    }
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(
            start_gateway(tmp_path / "gateway", database_url=gateway_database_url, **options)
        )
        if request.param == 1:
            yield first
            return
        shared = first.settings.resolved_database_url
        others = [
            stack.enter_context(
                start_gateway(tmp_path / f"gateway-{index}", database_url=shared, **options)
            )
            for index in range(1, request.param)
        ]
        yield SeveralGateways([first, *others])


@dataclass(frozen=True)
class Books:
    """An account's money as the ledger holds it, read straight from the database."""

    cached: BalanceRecord
    summed: BalanceRecord
    charges: int
    invariant_held: bool
    """Every entry left held ≤ balance and balance ≥ 0 (at every step of the race)."""


async def _books(settings: Settings, account: str) -> Books:
    database = Database.from_settings(settings)
    try:
        account_id = (await AccountService(database).get_account(account)).id
        ledger = CreditLedger(database)
        query = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
        async with database.session(read_only=True) as session:
            entries = (await session.scalars(query)).all()
        return Books(
            cached=await ledger.balance(account_id),
            summed=await ledger.ledger_totals(account_id),
            charges=-sum(e.balance_change for e in entries if e.kind == "charge"),
            invariant_held=all(0 <= e.held_after <= e.balance_after for e in entries),
        )
    finally:
        await database.dispose()


def _fire(gateway: RunningGateway, key: str, model: str) -> list[int | openai.APIStatusError]:
    """``REQUESTS`` requests at once (every other one streamed); the cost each success
    reports, or the error each failure raised."""
    barrier = threading.Barrier(REQUESTS)

    def one(index: int) -> int | openai.APIStatusError:
        client = gateway.client(api_key=key)
        try:
            barrier.wait(timeout=60)
            if index % 2:
                chunks = client.chat.completions.create(
                    model=model,
                    messages=MESSAGES,
                    max_tokens=MAX_TOKENS,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                usages = [chunk.usage for chunk in chunks if chunk.usage is not None]
                assert len(usages) == 1
                return int((usages[0].model_extra or {})["cost_micro_usd"])
            completion = client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=MAX_TOKENS
            )
            assert completion.usage is not None
            return int((completion.usage.model_extra or {})["cost_micro_usd"])
        except openai.APIStatusError as exc:
            return exc
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        return list(pool.map(one, range(REQUESTS)))


def _assert_refusals(refused: list[openai.APIStatusError]) -> None:
    for error in refused:
        assert error.status_code == 402, error
        assert error.code == "insufficient_credits", error
        assert error.type == "insufficient_quota"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _balance_over_http(gateway: RunningGateway, key: str) -> tuple[int, int, int]:
    with gateway.http() as http:
        answer = http.get("/v1/credits/balance", headers=_bearer(key))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return tuple(body[part]["micro_usd"] for part in ("balance", "held", "available"))


def _usage_costs(gateway: RunningGateway, key: str) -> list[int]:
    with gateway.http() as http:
        answer = http.get("/v1/usage", params={"limit": 100}, headers=_bearer(key))
    assert answer.status_code == 200, answer.text
    assert answer.json()["has_more"] is False
    return [record["cost"]["micro_usd"] for record in answer.json()["data"]]


def test_flat_price_balance_for_k_requests_lets_exactly_k_through(
    gateway: RunningGateway,
) -> None:
    grant = K * FLAT_PRICE
    key = asyncio.run(create_key(gateway.settings, "racer", grant=grant))

    results = _fire(gateway, key, "flat")

    costs = [result for result in results if isinstance(result, int)]
    refused = [result for result in results if isinstance(result, openai.APIStatusError)]
    assert costs == [FLAT_PRICE] * K
    assert len(refused) == REQUESTS - K
    _assert_refusals(refused)
    assert _balance_over_http(gateway, key) == (0, 0, 0)
    assert sorted(_usage_costs(gateway, key)) == [FLAT_PRICE] * K
    books = asyncio.run(_books(gateway.settings, "racer"))
    assert books.charges == grant == K * FLAT_PRICE
    assert books.cached == books.summed == BalanceRecord(books.cached.account_id, 0, 0)
    assert books.invariant_held


def test_per_token_holds_bound_by_max_tokens_never_overdraw(gateway: RunningGateway) -> None:
    request = ChatCompletionRequest.model_validate(
        {"model": "per-token", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    )
    bound = token_bound(request, context_length=8192)
    hold = PER_TOKEN.cost(bound.prompt_tokens, bound.completion_tokens)
    assert bound.completion_tokens == MAX_TOKENS and hold > PER_TOKEN_COST
    grant = K * hold + hold - 1  # short of K + 1 holds by one micro-USD
    key = asyncio.run(create_key(gateway.settings, "racer", grant=grant))

    results = _fire(gateway, key, "per-token")

    costs = [result for result in results if isinstance(result, int)]
    refused = [result for result in results if isinstance(result, openai.APIStatusError)]
    assert len(costs) + len(refused) == REQUESTS
    assert len(costs) >= 1 and len(refused) >= 1
    assert costs == [PER_TOKEN_COST] * len(costs)
    _assert_refusals(refused)
    spent = PER_TOKEN_COST * len(costs)
    left = grant - spent
    assert _balance_over_http(gateway, key) == (left, 0, left)
    assert sorted(_usage_costs(gateway, key)) == [PER_TOKEN_COST] * len(costs)
    books = asyncio.run(_books(gateway.settings, "racer"))
    assert books.charges == spent
    assert books.cached == books.summed == BalanceRecord(books.cached.account_id, left, 0)
    assert books.invariant_held


async def test_concurrent_holds_from_many_pools_never_exceed_the_balance(
    connections: list[Database], new_account: NewAccount
) -> None:
    ledgers = [CreditLedger(db) for db in connections]
    alice = await new_account("alice")
    await ledgers[0].credit(alice, K * 100, kind="grant", reference="g", reason="race")
    attempts = [
        ledgers[index % len(ledgers)].hold(alice, f"r{index}", 100, ttl=timedelta(minutes=1))
        for index in range(REQUESTS)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert sorted(r for r in results if isinstance(r, int)) == list(range(0, K * 100, 100))
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert len(refused) == REQUESTS - K
    assert await ledgers[1].balance(alice) == BalanceRecord(alice, K * 100, K * 100)
    assert await ledgers[2].ledger_totals(alice) == BalanceRecord(alice, K * 100, K * 100)


def _settlement(hold_id: str, account_id: int, cost: int) -> Settlement:
    usage = UsageRow(hold_id, account_id, "q", "m", "ok", utcnow())
    return Settlement(hold_id, account_id, cost, None, usage)


async def test_concurrent_settlements_of_one_request_charge_once(
    connections: list[Database], new_account: NewAccount
) -> None:
    ledgers = [CreditLedger(db) for db in connections]
    alice = await new_account("alice")
    await ledgers[0].credit(alice, 10_000, kind="grant", reference="g", reason="race")
    await ledgers[0].hold(alice, "r1", 5_000, ttl=timedelta(minutes=1))
    results = await asyncio.gather(
        *(ledger.settle(_settlement("r1", alice, 5_000)) for ledger in ledgers)
    )
    assert sorted(result.charged for result in results) == [0, 0, 0, 5_000]
    assert sum(result.repeated for result in results) == 3
    assert await ledgers[1].balance(alice) == BalanceRecord(alice, 5_000, 0)
    assert await ledgers[2].ledger_totals(alice) == BalanceRecord(alice, 5_000, 0)
