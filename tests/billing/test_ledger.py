"""The credit ledger and the billing service on it, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import TypeVar

import pytest

from infermesh.accounts import Principal
from infermesh.billing.ledger import (
    MAX_GRANT,
    CreditLedger,
    DuplicateReference,
    InsufficientCredits,
)
from infermesh.billing.pricing import Pricing, TokenBound, token_bound
from infermesh.billing.records import BalanceRecord, Earning, Settlement, UsageRow
from infermesh.billing.service import BillingService, Outcome
from infermesh.billing.tiers import TierExceeded, TierPolicy
from infermesh.billing.usage import UsageLog
from infermesh.catalog.spec import ModelSpec
from infermesh.errors import InvalidRequest, NotFound
from infermesh.mesh.worker import Operator
from infermesh.protocol.chat import ChatCompletionRequest, Usage
from infermesh.store import Database, Hold, UsageEntry, utcnow
from tests.billing.conftest import NewAccount
from tests.support.clock import Clock

TTL = timedelta(seconds=60)
T = TypeVar("T")


def settlement(
    hold_id: str, account_id: int, cost: int, earning: Earning | None = None
) -> Settlement:
    usage = UsageRow(hold_id, account_id, f"req-{hold_id}", "m", "ok", utcnow())
    return Settlement(hold_id, account_id, cost, earning, usage)


async def grant(
    ledger: CreditLedger, account_id: int, amount: int, reference: str = "g1"
) -> BalanceRecord:
    return await ledger.credit(account_id, amount, kind="grant", reference=reference, reason="t")


async def stored(database: Database, table: type[T], key: str) -> T | None:
    async with database.session(read_only=True) as session:
        return await session.get(table, key)


async def hold_status(database: Database, hold_id: str) -> str | None:
    hold = await stored(database, Hold, hold_id)
    return None if hold is None else hold.status


async def assert_consistent(ledger: CreditLedger, account_id: int) -> BalanceRecord:
    """The cached balance is the sum of the ledger, and neither part is negative."""
    cached = await ledger.balance(account_id)
    assert await ledger.ledger_totals(account_id) == cached
    assert cached.balance >= 0 and cached.held >= 0 and cached.held <= cached.balance
    return cached


async def test_grant_hold_settle(
    ledger: CreditLedger, database: Database, new_account: NewAccount
) -> None:
    alice = await new_account("alice")
    assert await grant(ledger, alice, 1_000_000) == BalanceRecord(alice, 1_000_000, 0)
    assert await ledger.hold(alice, "r1", 300_000, ttl=TTL) == 700_000
    assert await ledger.balance(alice) == BalanceRecord(alice, 1_000_000, 300_000)
    assert (await ledger.balance(alice)).available == 700_000
    assert await hold_status(database, "r1") == "open"

    settled = await ledger.settle(settlement("r1", alice, 123_457))
    assert (settled.charged, settled.repeated) == (123_457, False)
    assert settled.balance == BalanceRecord(alice, 876_543, 0)
    assert await ledger.balance(alice) == BalanceRecord(alice, 876_543, 0)
    assert await hold_status(database, "r1") == "settled"
    changes = [(e.kind, e.balance_change, e.held_change) for e in await ledger.entries(alice)]
    assert changes == [
        ("release", 0, -176_543),
        ("charge", -123_457, -123_457),
        ("hold", 0, 300_000),
        ("grant", 1_000_000, 0),
    ]
    assert [e.balance_after for e in await ledger.entries(alice)] == [876_543] * 2 + [10**6] * 2
    row = await stored(database, UsageEntry, "r1")
    assert row is not None and row.cost == 123_457
    await assert_consistent(ledger, alice)


async def test_settle_charges_at_most_the_hold_and_only_once(
    ledger: CreditLedger, database: Database, new_account: NewAccount
) -> None:
    alice = await new_account("alice")
    await grant(ledger, alice, 10_000)
    await ledger.hold(alice, "r1", 4_000, ttl=TTL)
    assert (await ledger.settle(settlement("r1", alice, 5_000))).charged == 4_000  # the hold
    entries = await ledger.entries(alice)
    assert [entry.kind for entry in entries] == ["charge", "hold", "grant"]

    again = await ledger.settle(settlement("r1", alice, 3_000))
    assert (again.charged, again.repeated) == (0, True)
    assert again.balance == BalanceRecord(alice, 6_000, 0)
    assert await ledger.entries(alice) == entries
    row = await stored(database, UsageEntry, "r1")
    assert row is not None and row.cost == 4_000


async def test_operator_earns_its_share_rounded_down(
    ledger: CreditLedger, database: Database, new_account: NewAccount
) -> None:
    alice, operator = await new_account("alice"), await new_account("operator")
    await grant(ledger, alice, 100_000)
    await ledger.hold(alice, "r1", 20_000, ttl=TTL)
    earning = Earning(operator, 8_000)
    settled = await ledger.settle(settlement("r1", alice, 12_347, earning))
    assert settled.charged == 12_347
    assert await ledger.balance(operator) == BalanceRecord(operator, 9_877, 0)  # 9877.6
    assert await ledger.balance(alice) == BalanceRecord(alice, 87_653, 0)
    (entry,) = await ledger.entries(operator)
    assert (entry.kind, entry.balance_change, entry.reference) == ("earning", 9_877, "r1")
    row = await stored(database, UsageEntry, "r1")
    assert row is not None and (row.cost, row.operator_earning) == (12_347, 9_877)
    await assert_consistent(ledger, alice)
    await assert_consistent(ledger, operator)


async def test_hold_beyond_available_holds_nothing(
    ledger: CreditLedger, database: Database, new_account: NewAccount
) -> None:
    alice = await new_account("alice")
    with pytest.raises(InsufficientCredits):
        await ledger.hold(alice, "r0", 1, ttl=TTL)  # never had money
    await grant(ledger, alice, 1_000)
    await ledger.hold(alice, "r1", 600, ttl=TTL)
    entries = await ledger.entries(alice)
    with pytest.raises(InsufficientCredits) as refused:
        await ledger.hold(alice, "r2", 401, ttl=TTL)
    assert refused.value.status_code == 402
    assert refused.value.code == "insufficient_credits"
    assert await hold_status(database, "r2") is None
    assert await ledger.entries(alice) == entries
    assert await ledger.balance(alice) == BalanceRecord(alice, 1_000, 600)
    assert await ledger.hold(alice, "r3", 400, ttl=TTL) == 0
    await assert_consistent(ledger, alice)


@pytest.mark.parametrize("amount", [0, -1, -1_000_000, MAX_GRANT + 1])
async def test_credit_refuses_bad_amounts(
    ledger: CreditLedger, new_account: NewAccount, amount: int
) -> None:
    alice = await new_account("alice")
    with pytest.raises(InvalidRequest) as refused:
        await grant(ledger, alice, amount)
    assert (refused.value.code, refused.value.param) == ("invalid_request", "amount")
    assert await ledger.entries(alice) == []
    assert await ledger.balance(alice) == BalanceRecord(alice, 0, 0)


async def test_credit_limits_and_references(ledger: CreditLedger, new_account: NewAccount) -> None:
    alice, bob = await new_account("alice"), await new_account("bob")
    assert (await grant(ledger, alice, MAX_GRANT, "big")).balance == MAX_GRANT
    await grant(ledger, alice, 5, "dep-1")
    with pytest.raises(DuplicateReference) as duplicate:
        await grant(ledger, alice, 7, "dep-1")
    assert (duplicate.value.status_code, duplicate.value.code) == (400, "duplicate_reference")
    await ledger.credit(alice, 11, kind="deposit", reference="dep-1", reason=None)
    await grant(ledger, bob, 13, "dep-1")
    assert (await assert_consistent(ledger, alice)).balance == MAX_GRANT + 5 + 11
    assert (await assert_consistent(ledger, bob)).balance == 13
    with pytest.raises(NotFound):
        await grant(ledger, 999_999, 1)


async def test_expired_hold_is_released(
    ledger: CreditLedger, database: Database, clock: Clock, new_account: NewAccount
) -> None:
    alice = await new_account("alice")
    await grant(ledger, alice, 1_000)
    await ledger.hold(alice, "r1", 800, ttl=TTL)
    clock.advance(59)
    assert await ledger.expire_holds() == 0
    clock.advance(1)
    assert await ledger.expire_holds() == 1
    assert await ledger.balance(alice) == BalanceRecord(alice, 1_000, 0)
    assert await hold_status(database, "r1") == "expired"
    newest = (await ledger.entries(alice))[0]
    assert (newest.kind, newest.held_change, newest.reason) == ("release", -800, "expired")
    assert await ledger.expire_holds() == 0
    await assert_consistent(ledger, alice)


async def test_late_settlement_charges_at_most_the_available_balance(
    ledger: CreditLedger, database: Database, clock: Clock, new_account: NewAccount
) -> None:
    alice = await new_account("alice")
    await grant(ledger, alice, 1_000)
    await ledger.hold(alice, "r1", 800, ttl=TTL)
    clock.advance(61)
    assert await ledger.expire_holds() == 1
    assert await ledger.hold(alice, "r2", 900, ttl=TTL) == 100

    late = await ledger.settle(settlement("r1", alice, 800))
    assert late.charged == 100
    assert await ledger.balance(alice) == BalanceRecord(alice, 900, 900)
    newest = (await ledger.entries(alice))[0]
    assert (newest.kind, newest.balance_change, newest.held_change) == ("charge", -100, 0)
    assert newest.reason == "late"
    assert await hold_status(database, "r1") == "settled"

    assert (await ledger.settle(settlement("r2", alice, 900))).charged == 900
    assert await assert_consistent(ledger, alice) == BalanceRecord(alice, 0, 0)


FLAT = ModelSpec(id="flat", tier="frontier", pricing=Pricing(per_request="0.01"))
USED = Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)


def _bound(max_tokens: int) -> TokenBound:
    return token_bound(_request(max_tokens), context_length=8192)


def _request(max_tokens: int) -> ChatCompletionRequest:
    messages = [{"role": "user", "content": "hello world"}]
    return ChatCompletionRequest.model_validate(
        {"model": "priced", "messages": messages, "max_tokens": max_tokens}
    )


@pytest.fixture
def billing(database: Database, ledger: CreditLedger) -> BillingService:
    return BillingService(ledger, UsageLog(database), tiers=TierPolicy(), operator_share=0.8)


async def test_billing_service_holds_the_bound_and_settles_usage(
    billing: BillingService, ledger: CreditLedger, new_account: NewAccount
) -> None:
    alice, operator = await new_account("alice"), await new_account("operator")
    await grant(ledger, alice, 1_000_000)
    pricing = Pricing(input_per_million="1", output_per_million="2")
    spec, request = ModelSpec(id="priced", context_length=8192, pricing=pricing), _request(8)
    most = token_bound(request, context_length=8192).prompt_tokens + 2 * 8
    assert billing.max_cost(spec, request) == most
    assert billing.max_cost(ModelSpec(id="free"), request) == 0

    principal = Principal("key_1", alice, "alice", "pro")
    bound = token_bound(request, context_length=8192)
    charge = await billing.authorize(principal, spec, bound, charge_id="c1", request_id="q1")
    assert (charge.held, charge.available) == (most, 1_000_000 - most)
    worker = Operator(worker_id="w1", account_id=operator)
    outcome = Outcome("succeeded", USED, stream=False, latency_ms=5.0, operator=worker)
    settled = await billing.settle(charge, outcome)
    assert settled.charged == 8 and settled.balance == BalanceRecord(alice, 999_992, 0)
    assert (await billing.settle(charge, outcome)).repeated  # before it is written
    await billing.close()  # settlements are written in batches; this writes the last one
    assert await ledger.balance(operator) == BalanceRecord(operator, 6, 0)  # 6.4 rounded down
    assert (await billing.settle(charge, outcome)).repeated  # and after
    assert await assert_consistent(ledger, alice) == BalanceRecord(alice, 999_992, 0)


async def test_failed_request_releases_the_whole_hold(
    billing: BillingService, ledger: CreditLedger, database: Database, new_account: NewAccount
) -> None:
    alice = await new_account("alice")
    await grant(ledger, alice, 50_000)
    principal = Principal("key_1", alice, "alice", "pro")
    charge = await billing.authorize(principal, FLAT, _bound(8), charge_id="c1", request_id="q")
    assert (charge.held, charge.available) == (10_000, 40_000)
    outcome = Outcome("failed", USED, stream=False, latency_ms=1.0, error_code="backend_error")
    assert (await billing.settle(charge, outcome)).charged == 0
    await billing.close()
    assert await assert_consistent(ledger, alice) == BalanceRecord(alice, 50_000, 0)
    row = await stored(database, UsageEntry, "c1")
    assert row is not None and (row.status, row.cost) == ("failed", 0)


async def test_tier_is_checked_before_anything_is_held(
    billing: BillingService, ledger: CreditLedger, new_account: NewAccount
) -> None:
    alice = await new_account("alice")
    await grant(ledger, alice, 50_000)
    principal = Principal("key_1", alice, "alice", "free")
    with pytest.raises(TierExceeded) as refused:
        await billing.authorize(principal, FLAT, _bound(8), charge_id="c", request_id="q")
    assert (refused.value.status_code, refused.value.code) == (402, "tier_exceeded")
    assert await ledger.balance(alice) == BalanceRecord(alice, 50_000, 0)


async def test_ledger_matches_the_cached_balance_after_a_mixed_sequence(
    ledger: CreditLedger, clock: Clock, new_account: NewAccount
) -> None:
    alice, bob, house = [await new_account(n) for n in ("alice", "bob", "house")]
    await grant(ledger, alice, 100_000)
    await ledger.credit(bob, 30_000, kind="deposit", reference="tx1", reason=None)
    await ledger.hold(alice, "a1", 40_000, ttl=TTL)
    await ledger.hold(bob, "b1", 30_000, ttl=TTL)
    with pytest.raises(InsufficientCredits):
        await ledger.hold(bob, "b2", 1, ttl=TTL)
    await ledger.settle(settlement("a1", alice, 39_999, Earning(bob, 7_000)))
    await ledger.settle(settlement("b1", bob, 0))
    await ledger.hold(bob, "b3", 57_999, ttl=TTL)
    await ledger.settle(settlement("b3", bob, 57_999, Earning(bob, 5_000)))  # bob serves himself
    await ledger.hold(alice, "a2", 60_001, ttl=TTL)
    clock.advance(3600)
    assert await ledger.expire_holds() == 1
    await ledger.settle(settlement("a2", alice, 70_000, Earning(house, 10_000)))
    with pytest.raises(DuplicateReference):
        await ledger.credit(bob, 1, kind="deposit", reference="tx1", reason=None)

    assert await assert_consistent(ledger, alice) == BalanceRecord(alice, 0, 0)
    assert await assert_consistent(ledger, bob) == BalanceRecord(bob, 28_999, 0)
    assert await assert_consistent(ledger, house) == BalanceRecord(house, 60_001, 0)
