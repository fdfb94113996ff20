"""``UsageLog.spend_series``: an account's usage per hour or day, summed by the database.

Records are written straight into the usage table at chosen times (on SQLite and on
PostgreSQL), so bucket edges can be tested to the microsecond.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from infermesh.billing.usage import MAX_BUCKETS, UsageLog
from infermesh.errors import InvalidRequest
from infermesh.store import Database, UsageEntry
from tests.billing.conftest import NewAccount

NOW = datetime(2030, 1, 10, 15, 20, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


async def record(
    database: Database,
    account_id: int,
    at: datetime,
    *,
    prompt: int = 10,
    completion: int = 5,
    cost: int = 1_000,
) -> None:
    async with database.session() as session, session.begin():
        session.add(
            UsageEntry(
                id=f"chatcmpl-{secrets.token_hex(8)}",
                account_id=account_id,
                request_id=secrets.token_hex(8),
                model="m",
                status="ok",
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost=cost,
                created_at=at,
            )
        )


async def test_hours_hold_their_records_and_empty_hours_are_zeros(
    database: Database, new_account: NewAccount
) -> None:
    account = await new_account("series")
    this_hour = NOW.replace(minute=0, second=0)
    await record(database, account, this_hour, cost=100)  # the hour's first instant
    await record(database, account, NOW, prompt=1, completion=2, cost=200)
    await record(database, account, this_hour - timedelta(microseconds=1), cost=400)
    await record(database, account, this_hour - 3 * HOUR + timedelta(minutes=59), cost=800)

    series = await UsageLog(database).spend_series(
        account, since=this_hour - 3 * HOUR, bucket="hour", until=NOW
    )

    assert [point.start for point in series] == [this_hour - n * HOUR for n in (3, 2, 1, 0)]
    assert all(point.start.tzinfo is not None for point in series)
    assert [point.cost for point in series] == [800, 0, 400, 300]
    assert [point.requests for point in series] == [1, 0, 1, 2]
    assert series[-1].prompt_tokens == 11 and series[-1].completion_tokens == 7
    assert series[-1].tokens == 18


async def test_days_are_utc_days_and_the_series_adds_up_to_the_totals(
    database: Database, new_account: NewAccount
) -> None:
    account = await new_account("daily")
    since = NOW - 3 * DAY  # mid-day: the first day counts from here on
    for at, cost in [
        (since - timedelta(seconds=1), 1),  # before the series
        (since, 10),
        (NOW.replace(hour=0, minute=0, second=0) - timedelta(microseconds=1), 100),
        (NOW.replace(hour=0, minute=0, second=0), 1_000),
        (NOW, 10_000),
    ]:
        await record(database, account, at, cost=cost)
    usage = UsageLog(database)

    series = await usage.spend_series(account, since=since, bucket="day", until=NOW)

    midnight = NOW.replace(hour=0, minute=0, second=0)
    assert [point.start for point in series] == [midnight - n * DAY for n in (3, 2, 1, 0)]
    assert [point.cost for point in series] == [10, 0, 100, 11_000]
    totals = await usage.totals(account, since=since)
    assert sum(point.cost for point in series) == totals.cost
    assert sum(point.requests for point in series) == totals.requests
    assert sum(point.tokens for point in series) == totals.prompt_tokens + totals.completion_tokens


async def test_another_accounts_records_are_never_counted(
    database: Database, new_account: NewAccount
) -> None:
    mine, theirs = await new_account("mine"), await new_account("theirs")
    await record(database, theirs, NOW, cost=5_000)

    series = await UsageLog(database).spend_series(mine, since=NOW - DAY, bucket="hour", until=NOW)

    assert len(series) == 25  # the partial hours at both ends
    assert all(point.requests == 0 and point.cost == 0 for point in series)


async def test_a_series_is_bounded(database: Database, new_account: NewAccount) -> None:
    account = await new_account("bounded")
    usage = UsageLog(database)
    longest = await usage.spend_series(
        account, since=NOW - (MAX_BUCKETS - 1) * HOUR, bucket="hour", until=NOW
    )
    assert len(longest) == MAX_BUCKETS
    with pytest.raises(InvalidRequest):
        await usage.spend_series(account, since=NOW - MAX_BUCKETS * HOUR, bucket="hour", until=NOW)
    with pytest.raises(InvalidRequest):  # backwards
        await usage.spend_series(account, since=NOW + DAY, bucket="day", until=NOW)
