"""The limit stores' one contract, held by the in-process store and the Redis store alike.

GCRA buckets (bursts, exact waits, token draws, giving back, debt), concurrency pools
(slots, release, expiry, renewal), all-or-nothing admission, ``inspect`` changing
nothing, atomicity under concurrent admissions (for Redis across two connection pools,
as two gateways have), Redis being unreachable or silent, and Redis keys expiring. The
memory store is also checked to the exact second against a clock moved by hand.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis

from infermesh.limits.memory import MemoryLimitStore
from infermesh.limits.redis_store import RedisLimitStore
from infermesh.limits.store import (
    Bucket,
    Draw,
    LimiterUnavailable,
    LimitStore,
    Pool,
    Verdict,
)
from tests.limits.conftest import HandClock, StoreFactory, eventually
from tests.support.redis import keys_with_prefix, redis_url
from tests.support.servers import free_port

HOUR = 3600.0


async def burst(store: LimitStore, bucket: Bucket, count: int) -> list[Verdict]:
    """``count`` unit draws from ``bucket``, one after another."""
    return [await store.admit([Draw(bucket, 1)], [], slot=f"b{i}") for i in range(count)]


async def in_use(store: LimitStore, pool: Pool) -> int:
    verdict = await store.inspect([], [pool])
    return verdict.occupancy[0].in_use


async def remaining(store: LimitStore, bucket: Bucket) -> int:
    verdict = await store.inspect([bucket], [])
    return verdict.levels[0].remaining


# --- buckets ---------------------------------------------------------------------------


async def test_a_bucket_admits_exactly_its_limit_in_a_burst(stores: StoreFactory) -> None:
    store = stores.new()
    bucket = Bucket(stores.key("rpm"), 3, 60.0)  # one unit every 20 s: the test takes far less

    verdicts = await burst(store, bucket, 3)
    refused = await store.admit([Draw(bucket, 1)], [], slot="late")

    assert [v.admitted for v in verdicts] == [True, True, True]
    assert [v.levels[0].remaining for v in verdicts] == [2, 1, 0]
    assert not refused.admitted
    assert refused.refused_by == bucket
    assert 19.0 < refused.retry_after <= 20.0
    assert refused.levels[0].remaining == 0
    assert 59.0 < refused.levels[0].reset <= 60.0


async def test_a_bucket_refills_one_unit_per_interval(hand_clock: HandClock) -> None:
    store = MemoryLimitStore(clock=hand_clock)
    bucket = Bucket("rpm", 3, 60.0)
    await burst(store, bucket, 3)

    refused = await store.admit([Draw(bucket, 1)], [], slot="x")
    assert not refused.admitted
    assert refused.retry_after == pytest.approx(20.0, abs=1e-9)

    hand_clock.advance(19.99)
    almost = await store.admit([Draw(bucket, 1)], [], slot="x")
    assert not almost.admitted
    assert almost.retry_after == pytest.approx(0.01, abs=1e-6)

    hand_clock.advance(0.01)
    assert (await store.admit([Draw(bucket, 1)], [], slot="x")).admitted
    again = await store.admit([Draw(bucket, 1)], [], slot="y")
    assert not again.admitted
    assert again.retry_after == pytest.approx(20.0, abs=1e-6)


async def test_a_full_bucket_refills_to_its_limit_and_no_further(hand_clock: HandClock) -> None:
    store = MemoryLimitStore(clock=hand_clock)
    bucket = Bucket("rpm", 3, 60.0)
    await burst(store, bucket, 3)

    hand_clock.advance(40.0)
    assert await remaining(store, bucket) == 2
    hand_clock.advance(600.0)  # idle for ten windows: still a burst of 3, not 30
    level = (await store.inspect([bucket], [])).levels[0]
    assert (level.remaining, level.reset) == (3, 0.0)
    verdicts = await burst(store, bucket, 4)
    assert [v.admitted for v in verdicts] == [True, True, True, False]


async def test_a_token_draw_larger_than_what_remains_is_refused(stores: StoreFactory) -> None:
    store = stores.new()
    tokens = Bucket(stores.key("tpm"), 100, HOUR)  # one token every 36 s

    first = await store.admit([Draw(tokens, 60)], [], slot="a")
    too_much = await store.admit([Draw(tokens, 41)], [], slot="b")
    just_enough = await store.admit([Draw(tokens, 40)], [], slot="c")

    assert first.admitted and first.levels[0].remaining == 40
    assert not too_much.admitted
    assert too_much.refused_by == tokens
    assert 35.0 < too_much.retry_after <= 36.0
    assert just_enough.admitted and just_enough.levels[0].remaining == 0


async def test_adjust_gives_back_but_never_beyond_full(stores: StoreFactory) -> None:
    store = stores.new()
    tokens = Bucket(stores.key("tpm"), 100, HOUR)
    assert (await store.admit([Draw(tokens, 50)], [], slot="a")).admitted

    await store.adjust([Draw(tokens, -30)])
    assert await remaining(store, tokens) == 80

    await store.adjust([Draw(tokens, -1000)])
    level = (await store.inspect([tokens], [])).levels[0]
    assert (level.remaining, level.reset) == (100, 0.0)
    whole = await store.admit([Draw(tokens, 100)], [], slot="b")
    one_more = await store.admit([Draw(tokens, 1)], [], slot="c")
    assert whole.admitted
    assert not one_more.admitted


async def test_adjust_can_put_a_bucket_into_debt(stores: StoreFactory) -> None:
    store = stores.new()
    tokens = Bucket(stores.key("tpm"), 10, HOUR)  # one token every 360 s

    await store.adjust([Draw(tokens, 25)])  # 15 more than the whole limit: forced anyway

    level = (await store.inspect([tokens], [])).levels[0]
    assert level.remaining == 0
    assert 8990.0 < level.reset <= 9000.0
    nothing = await store.admit([Draw(tokens, 0)], [], slot="a")
    assert not nothing.admitted
    assert nothing.refused_by == tokens
    assert 5390.0 < nothing.retry_after <= 5400.0


async def test_debt_is_paid_off_by_time(hand_clock: HandClock) -> None:
    store = MemoryLimitStore(clock=hand_clock)
    tokens = Bucket("tpm", 10, HOUR)
    await store.adjust([Draw(tokens, 25)])

    hand_clock.advance(5399.0)
    assert not (await store.admit([Draw(tokens, 0)], [], slot="a")).admitted
    hand_clock.advance(1.0)
    zero = await store.admit([Draw(tokens, 0)], [], slot="a")
    assert zero.admitted
    assert zero.levels[0].remaining == 0
    assert not (await store.admit([Draw(tokens, 1)], [], slot="b")).admitted
    hand_clock.advance(360.0)
    assert (await store.admit([Draw(tokens, 1)], [], slot="b")).admitted


# --- all or nothing --------------------------------------------------------------------


async def test_a_refused_admission_takes_nothing(stores: StoreFactory) -> None:
    store = stores.new()
    roomy = Bucket(stores.key("tpm"), 5, HOUR)
    full = Bucket(stores.key("rpm"), 1, HOUR)
    pool = Pool(stores.key("concurrent"), 2)
    assert (await store.admit([Draw(full, 1)], [], slot="first")).admitted

    verdict = await store.admit([Draw(roomy, 3), Draw(full, 1)], [pool], slot="second")

    assert not verdict.admitted
    assert verdict.refused_by == full
    assert [level.remaining for level in verdict.levels] == [5, 0]
    after = await store.inspect([roomy, full], [pool])
    assert [level.remaining for level in after.levels] == [5, 0]
    assert after.levels[0].reset == 0.0
    assert after.occupancy[0].in_use == 0
    assert (await store.admit([Draw(roomy, 5)], [pool], slot="third")).admitted


async def test_a_full_pool_refuses_without_drawing_from_buckets(stores: StoreFactory) -> None:
    store = stores.new()
    tokens = Bucket(stores.key("tpm"), 10, HOUR)
    pool = Pool(stores.key("concurrent"), 1)
    assert (await store.admit([], [pool], slot="holder")).admitted

    verdict = await store.admit([Draw(tokens, 4)], [pool], slot="second")

    assert not verdict.admitted
    assert verdict.refused_by == pool
    assert verdict.retry_after == 1.0
    assert await remaining(store, tokens) == 10


async def test_the_longest_wait_of_several_refusals_is_reported(stores: StoreFactory) -> None:
    store = stores.new()
    half_minute = Bucket(stores.key("fast"), 2, 60.0)  # refills one every 30 s
    minute = Bucket(stores.key("slow"), 1, 60.0)  # refills one every 60 s
    await burst(store, half_minute, 2)
    await burst(store, minute, 1)

    verdict = await store.admit([Draw(half_minute, 1), Draw(minute, 1)], [], slot="x")

    assert not verdict.admitted
    assert verdict.refused_by == minute
    assert 59.0 < verdict.retry_after <= 60.0


# --- pools -----------------------------------------------------------------------------


async def test_a_pool_admits_exactly_its_limit(stores: StoreFactory) -> None:
    store = stores.new()
    pool = Pool(stores.key("concurrent"), 3)

    verdicts = [await store.admit([], [pool], slot=f"s{i}") for i in range(4)]

    assert [v.admitted for v in verdicts] == [True, True, True, False]
    assert [v.occupancy[0].in_use for v in verdicts] == [1, 2, 3, 3]
    assert verdicts[2].occupancy[0].remaining == 0
    assert verdicts[3].refused_by == pool
    assert verdicts[3].retry_after == 1.0


async def test_more_requests_at_once_than_connections_all_get_an_answer(
    stores: StoreFactory,
) -> None:
    """A thousand streams ending at once each release their slot: with more commands at
    once than the Redis store has connections, they wait their turn, none fails."""
    store = stores.new()
    pool = Pool(stores.key("concurrent"), 2_000)
    many = 1_000
    verdicts = await asyncio.gather(*(store.admit([], [pool], slot=f"s{i}") for i in range(many)))
    assert all(verdict.admitted for verdict in verdicts)
    await asyncio.gather(*(store.finish([], [pool], slot=f"s{i}") for i in range(many)))
    after = await store.admit([], [pool], slot="last")
    assert after.occupancy[0].in_use == 1


async def test_release_frees_exactly_one_slot(stores: StoreFactory) -> None:
    store = stores.new()
    pool = Pool(stores.key("concurrent"), 3)
    for i in range(3):
        assert (await store.admit([], [pool], slot=f"s{i}")).admitted

    await store.release([pool], slot="s0")
    assert await in_use(store, pool) == 2
    assert (await store.admit([], [pool], slot="s3")).admitted

    await store.release([pool], slot="s0")  # twice
    await store.release([pool], slot="never-taken")
    assert await in_use(store, pool) == 3
    assert not (await store.admit([], [pool], slot="s4")).admitted


async def test_finish_adjusts_and_releases_at_once(stores: StoreFactory) -> None:
    store = stores.new()
    tokens = Bucket(stores.key("tpd"), 100, 86400.0)
    pool = Pool(stores.key("concurrent"), 1)
    assert (await store.admit([Draw(tokens, 40)], [pool], slot="a")).admitted

    await store.finish([Draw(tokens, -30)], [pool], slot="a")  # used 10 of the 40 drawn

    assert await remaining(store, tokens) == 90
    assert await in_use(store, pool) == 0
    await store.finish([], [pool], slot="a")  # a second finish changes nothing
    assert await remaining(store, tokens) == 90
    assert (await store.admit([Draw(tokens, 90)], [pool], slot="b")).admitted


async def test_a_full_pool_waits_longer_than_a_nearly_refilled_bucket(
    hand_clock: HandClock,
) -> None:
    store = MemoryLimitStore(clock=hand_clock, slot_ttl=120.0)
    bucket = Bucket("rpm", 1, 60.0)
    pool = Pool("concurrent", 1)
    assert (await store.admit([Draw(bucket, 1)], [pool], slot="a")).admitted
    hand_clock.advance(59.5)  # the bucket refills in 0.5 s; the slot is still held

    verdict = await store.admit([Draw(bucket, 1)], [pool], slot="b")

    assert not verdict.admitted
    assert verdict.refused_by == pool
    assert verdict.retry_after == 1.0


async def test_renewing_a_slot_never_taken_takes_nothing(stores: StoreFactory) -> None:
    store = stores.new()
    pool = Pool(stores.key("concurrent"), 1)

    await store.renew({"ghost": [pool]})

    assert await in_use(store, pool) == 0
    assert (await store.admit([], [pool], slot="real")).admitted


async def test_a_slot_not_renewed_expires(hand_clock: HandClock) -> None:
    store = MemoryLimitStore(slot_ttl=30.0, clock=hand_clock)
    pool = Pool("concurrent", 1)
    assert (await store.admit([], [pool], slot="lost")).admitted

    hand_clock.advance(29.9)
    assert await in_use(store, pool) == 1
    assert not (await store.admit([], [pool], slot="next")).admitted
    hand_clock.advance(0.1)
    assert await in_use(store, pool) == 0
    assert (await store.admit([], [pool], slot="next")).admitted


async def test_a_renewed_slot_outlives_its_first_lifetime(hand_clock: HandClock) -> None:
    store = MemoryLimitStore(slot_ttl=30.0, clock=hand_clock)
    pool = Pool("concurrent", 2)
    assert (await store.admit([], [pool], slot="kept")).admitted
    assert (await store.admit([], [pool], slot="lost")).admitted

    hand_clock.advance(20.0)
    await store.renew({"kept": [pool]})
    hand_clock.advance(20.0)  # 40 s after admission, 20 s after renewal
    assert await in_use(store, pool) == 1
    await store.release([pool], slot="kept")
    assert await in_use(store, pool) == 0

    assert (await store.admit([], [pool], slot="again")).admitted
    await store.renew({"again": [pool]})
    hand_clock.advance(30.0)
    assert await in_use(store, pool) == 0


async def test_a_redis_slot_not_renewed_expires(redis_stores: StoreFactory) -> None:
    store = redis_stores.new(slot_ttl=0.5)
    pool = Pool(redis_stores.key("concurrent"), 1)
    started = time.monotonic()
    assert (await store.admit([], [pool], slot="lost")).admitted
    assert not (await store.admit([], [pool], slot="next")).admitted

    async def freed() -> bool:
        return await in_use(store, pool) == 0

    await eventually(freed, within=5.0, what="the slot expires")
    assert time.monotonic() - started >= 0.45
    assert (await store.admit([], [pool], slot="next")).admitted


async def test_a_renewed_redis_slot_outlives_its_first_lifetime(
    redis_stores: StoreFactory,
) -> None:
    store = redis_stores.new(slot_ttl=1.5)
    pool = Pool(redis_stores.key("concurrent"), 2)
    started = time.monotonic()
    assert (await store.admit([], [pool], slot="kept")).admitted
    assert (await store.admit([], [pool], slot="lost")).admitted

    async def only_kept_left() -> bool:
        await store.renew({"kept": [pool]})
        return await in_use(store, pool) == 1

    await eventually(only_kept_left, within=6.0, what="the slot not renewed expires")
    assert time.monotonic() - started >= 1.4
    await store.release([pool], slot="kept")
    assert await in_use(store, pool) == 0


# --- inspect ---------------------------------------------------------------------------


async def test_inspect_changes_nothing(stores: StoreFactory) -> None:
    store = stores.new()
    tokens = Bucket(stores.key("tpm"), 10, HOUR)
    pool = Pool(stores.key("concurrent"), 3)
    assert (await store.admit([Draw(tokens, 4)], [pool], slot="a")).admitted

    first = await store.inspect([tokens], [pool])
    second = await store.inspect([tokens], [pool])

    assert first.admitted and first.refused_by is None
    assert [lv.remaining for lv in first.levels] == [lv.remaining for lv in second.levels] == [6]
    assert first.levels[0].reset == pytest.approx(second.levels[0].reset, abs=1.0)
    assert first.occupancy == second.occupancy
    assert first.occupancy[0].in_use == 1
    assert (await store.admit([Draw(tokens, 6)], [pool], slot="b")).admitted
    assert (await store.admit([], [pool], slot="c")).admitted
    assert not (await store.admit([], [pool], slot="d")).admitted
    assert not (await store.admit([Draw(tokens, 1)], [], slot="e")).admitted


async def test_inspecting_unused_limits_shows_them_full(stores: StoreFactory) -> None:
    store = stores.new()
    tokens = Bucket(stores.key("tpd"), 1000, 86400.0)
    pool = Pool(stores.key("concurrent"), 4)

    verdict = await store.inspect([tokens], [pool])

    assert (verdict.levels[0].remaining, verdict.levels[0].reset) == (1000, 0.0)
    assert (verdict.occupancy[0].in_use, verdict.occupancy[0].remaining) == (0, 4)
    if stores.kind == "redis":
        assert keys_with_prefix(stores.prefix) == {}


# --- concurrency -----------------------------------------------------------------------


async def admit_all(
    stores: list[LimitStore], draws: list[Draw], pools: list[Pool], count: int
) -> list[Verdict]:
    """``count`` admissions at once, spread over ``stores`` in turn."""
    return await asyncio.gather(
        *(stores[i % len(stores)].admit(draws, pools, slot=f"c{i}") for i in range(count))
    )


async def test_concurrent_admissions_never_overfill(stores: StoreFactory) -> None:
    store = stores.new()
    requests = Bucket(stores.key("rpm"), 10, HOUR)
    pool = Pool(stores.key("concurrent"), 7)

    verdicts = await admit_all([store], [Draw(requests, 1)], [pool], 50)

    assert sum(v.admitted for v in verdicts) == 7
    assert all(v.refused_by == pool for v in verdicts if not v.admitted)
    assert await in_use(store, pool) == 7
    assert await remaining(store, requests) == 3


async def test_concurrent_draws_never_overdraw(stores: StoreFactory) -> None:
    store = stores.new()
    requests = Bucket(stores.key("rpm"), 10, HOUR)

    verdicts = await admit_all([store], [Draw(requests, 1)], [], 50)

    assert sum(v.admitted for v in verdicts) == 10
    assert await remaining(store, requests) == 0


async def test_two_redis_stores_share_one_limit(redis_stores: StoreFactory) -> None:
    gateways = [redis_stores.new(), redis_stores.new()]
    requests = Bucket(redis_stores.key("rpm"), 10, HOUR)
    pool = Pool(redis_stores.key("concurrent"), 7)

    verdicts = await admit_all(gateways, [Draw(requests, 1)], [pool], 50)

    assert sum(v.admitted for v in verdicts) == 7
    assert all(v.refused_by == pool for v in verdicts if not v.admitted)
    for gateway in gateways:
        assert await in_use(gateway, pool) == 7
        assert await remaining(gateway, requests) == 3


async def test_two_redis_stores_share_one_bucket(redis_stores: StoreFactory) -> None:
    gateways = [redis_stores.new(), redis_stores.new()]
    requests = Bucket(redis_stores.key("rpm"), 10, HOUR)

    verdicts = await admit_all(gateways, [Draw(requests, 1)], [], 50)

    assert sum(v.admitted for v in verdicts) == 10
    assert all(v.refused_by == requests for v in verdicts if not v.admitted)
    for gateway in gateways:
        assert await remaining(gateway, requests) == 0


# --- Redis out of reach ----------------------------------------------------------------


def every_operation(store: LimitStore) -> dict[str, Callable[[], Awaitable[object]]]:
    bucket = Bucket("imtest-unreachable:{a1}:rpm", 5, 60.0)
    pool = Pool("imtest-unreachable:{a1}:concurrent", 2)
    return {
        "ping": lambda: store.ping(),
        "admit": lambda: store.admit([Draw(bucket, 1)], [pool], slot="s"),
        "adjust": lambda: store.adjust([Draw(bucket, 3)]),
        "release": lambda: store.release([pool], slot="s"),
        "finish": lambda: store.finish([Draw(bucket, -1)], [pool], slot="s"),
        "renew": lambda: store.renew({"s": [pool]}),
        "inspect": lambda: store.inspect([bucket], [pool]),
    }


@pytest.mark.parametrize("password", ["", "secret"])
async def test_unreachable_redis_raises_limiter_unavailable(password: str) -> None:
    port = free_port()
    credentials = f":{password}@" if password else ""
    store = RedisLimitStore(f"redis://{credentials}127.0.0.1:{port}/0", timeout=0.5)
    try:
        for name, operation in every_operation(store).items():
            with pytest.raises(LimiterUnavailable) as caught:
                await operation()
            error = caught.value
            assert (error.status_code, error.code) == (503, "rate_limiter_unavailable"), name
            assert f"127.0.0.1:{port}/0" in error.detail, name
            if password:
                assert "secret" not in error.detail, name
                assert "secret" not in str(error), name
                assert "***" in error.detail, name
    finally:
        await store.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a Redis that hangs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


async def test_a_silent_redis_times_out_as_unavailable(silent_server: int) -> None:
    store = RedisLimitStore(f"redis://127.0.0.1:{silent_server}/0", timeout=0.3)
    try:
        for name, operation in every_operation(store).items():
            started = time.monotonic()
            with pytest.raises(LimiterUnavailable) as caught:
                await asyncio.wait_for(operation(), timeout=10)
            assert time.monotonic() - started < 5.0, name
            assert f"127.0.0.1:{silent_server}" in caught.value.detail, name
    finally:
        await store.close()


# --- Redis keys ------------------------------------------------------------------------


async def test_redis_keys_expire(redis_stores: StoreFactory) -> None:
    store = redis_stores.new()
    requests = Bucket(redis_stores.key("rpm"), 3, 60.0)
    tokens = Bucket(redis_stores.key("tpm"), 10, HOUR)
    pool = Pool(redis_stores.key("concurrent"), 2)
    for i in range(3):
        assert (await store.admit([Draw(requests, 1)], [pool], slot=f"s{i % 2}")).admitted
        await store.release([pool], slot=f"s{i % 2}")
    await store.adjust([Draw(tokens, 25)])
    held = await store.admit([], [pool], slot="held")
    assert held.admitted

    client = redis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        keys = keys_with_prefix(redis_stores.prefix)
        assert set(keys) == {requests.key, tokens.key, pool.key}
        ttls = {key: client.pttl(key) for key in keys}
    finally:
        client.close()
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    assert ttls[requests.key] <= math.ceil(60.0 * 1000) + 1000
    assert 9000 * 1000 < ttls[tokens.key] <= 9001 * 1000
    assert ttls[pool.key] <= 30 * 1000 + 1000
