"""The durable job queue, on SQLite and PostgreSQL: enqueue and look up, claims under
leases and per-account limits, the ends of a job, cancels, sweeps, stats, webhook
deliveries, and several gateways claiming from one queue at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from infermesh.errors import NotFound
from infermesh.jobs.queue import JobQueue, TooManyQueuedJobs
from infermesh.jobs.records import CancelOutcome, ClaimedJob, JobEvent, JobRecord
from infermesh.store import AsyncJob, Database, WebhookDelivery
from tests.jobs.conftest import NewAccount
from tests.support.clock import Clock

LEASE = timedelta(seconds=30)
RETENTION = timedelta(hours=1)
REQUEST = '{"model":"m","messages":[{"role":"user","content":"hi"}]}'


async def _enqueue(queue: JobQueue, account_id: int, **options: object) -> JobRecord:
    values: dict[str, object] = {
        "key_id": "key_1",
        "model": "m",
        "request_json": REQUEST,
        "hold_id": None,
        "held": 0,
        "deadline_at": None,
        "webhook_url": None,
        "max_queued": 1000,
    }
    values.update(options)
    return await queue.enqueue(account_id=account_id, **values)  # type: ignore[arg-type]


Enqueue = Callable[..., Awaitable[JobRecord]]


@pytest.fixture
def enqueue(queue: JobQueue, clock: Clock) -> Enqueue:
    """Enqueue a job for an account a millisecond after the one before, so jobs have
    a known order (one creation time each)."""

    async def add(account_id: int, **options: object) -> JobRecord:
        clock.advance(0.001)
        return await _enqueue(queue, account_id, **options)

    return add


async def claim(
    queue: JobQueue, owner: str = "gw_a", limit: int = 100, cap: int = 100
) -> list[str]:
    claimed = await queue.claim(owner, limit=limit, lease=LEASE, max_processing_per_account=cap)
    return [job.id for job in claimed]


async def row(database: Database, job_id: str) -> AsyncJob | None:
    async with database.session(read_only=True) as session:
        return await session.get(AsyncJob, job_id)


async def deliveries(database: Database) -> list[WebhookDelivery]:
    async with database.session(read_only=True) as session:
        query = select(WebhookDelivery).order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        return list((await session.scalars(query)).all())


# --- enqueue, get, list -----------------------------------------------------------------


async def test_an_enqueued_job_can_be_read_by_its_account_only(
    queue: JobQueue, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice, bob = await new_account("alice"), await new_account("bob")
    job = await enqueue(alice, hold_id="job_hold", held=500, webhook_url="https://x.test/h")
    assert job.id.startswith("job_") and len(job.id) == 28
    assert (job.status, job.retries, job.held, job.hold_id) == ("queued", 0, 500, "job_hold")
    assert job.created_at == job.available_at == clock.now
    assert await queue.get(alice, job.id) == job
    assert await queue.get(bob, job.id) is None
    assert await queue.get(alice, "job_missing") is None


async def test_enqueue_refuses_more_queued_jobs_than_allowed(
    queue: JobQueue, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice, bob = await new_account("alice"), await new_account("bob")
    for _ in range(2):
        await enqueue(alice, max_queued=2)
    clock.advance(1)
    with pytest.raises(TooManyQueuedJobs) as refused:
        await enqueue(alice, max_queued=2)
    assert (refused.value.status_code, refused.value.code) == (429, "too_many_queued_jobs")
    await enqueue(bob, max_queued=2)  # another account's queue is its own
    await claim(queue, limit=1)  # a processing job is no longer queued
    await enqueue(alice, max_queued=2)
    assert len(await queue.list(alice, status="queued", limit=10, after=None)) == 2


async def test_list_pages_newest_first_without_payloads(
    queue: JobQueue, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice, bob = await new_account("alice"), await new_account("bob")
    made = [await enqueue(alice) for _ in range(4)]
    made.append(await _enqueue(queue, alice))  # at the same time: the id breaks the tie
    expected = sorted(made, key=lambda job: (job.created_at, job.id), reverse=True)
    pages: list[list[str]] = []
    after = None
    while page := await queue.list(alice, status=None, limit=2, after=after):
        pages.append([job.id for job in page])
        after = page[-1].id
    assert pages == [[j.id for j in expected[i : i + 2]] for i in (0, 2, 4)]
    await claim(queue, limit=1)
    await queue.complete("gw_a", made[0].id, result_json='{"ok":1}', retention=RETENTION)
    listed = await queue.list(alice, status="complete", limit=10, after=None)
    assert [job.id for job in listed] == [made[0].id]
    assert listed[0].result_json is None  # a list carries no payloads
    assert len(await queue.list(alice, status=None, limit=0, after=None)) == 1
    assert await queue.list(bob, status=None, limit=10, after=None) == []
    with pytest.raises(NotFound):
        await queue.list(bob, status=None, limit=10, after=made[0].id)


# --- claims and leases ------------------------------------------------------------------


async def test_claim_takes_the_oldest_due_jobs_first(
    queue: JobQueue, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    jobs = []
    for _ in range(5):
        jobs.append(await enqueue(alice, hold_id="h", held=7))
        clock.advance(1)
    claimed = await queue.claim("gw_a", limit=3, lease=LEASE, max_processing_per_account=10)
    assert [job.id for job in claimed] == [job.id for job in jobs[:3]]
    assert claimed[0] == ClaimedJob(
        id=jobs[0].id,
        account_id=alice,
        key_id="key_1",
        model="m",
        request_json=REQUEST,
        hold_id="h",
        held=7,
        retries=0,
        webhook_url=None,
        deadline_at=None,
        lease_expires_at=clock.now + LEASE,
    )
    started = await queue.get(alice, jobs[0].id)
    assert started is not None and started.status == "processing"
    assert started.started_at == clock.now
    assert await claim(queue, "gw_b") == [job.id for job in jobs[3:]]
    assert await claim(queue) == []


async def test_claim_keeps_each_account_within_its_limit(
    queue: JobQueue, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice, bob, carol = [await new_account(name) for name in ("alice", "bob", "carol")]
    a = [await enqueue(alice) for _ in range(6)]  # the oldest: they would fill a claim
    clock.advance(1)
    b = [await enqueue(bob) for _ in range(2)]
    c = [await enqueue(carol) for _ in range(3)]
    limits = {alice: 1, bob: 3, carol: 2}
    claimed = await queue.claim(
        "gw_a", limit=4, lease=LEASE, max_processing_per_account=limits.__getitem__
    )
    assert [job.id for job in claimed] == [a[0].id, b[0].id, b[1].id, c[0].id]
    again = await queue.claim(
        "gw_b", limit=10, lease=LEASE, max_processing_per_account=limits.__getitem__
    )
    assert [job.id for job in again] == [c[1].id]  # alice and carol are full, bob has none
    queued = await queue.list(alice, status="queued", limit=10, after=None)
    assert len(queued) == 5
    await queue.complete("gw_a", a[0].id, result_json="{}", retention=RETENTION)
    assert await claim(queue, cap=1) == [a[1].id]


async def test_a_lapsed_lease_is_claimed_again_with_one_more_retry(
    queue: JobQueue, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    job = await enqueue(alice)
    assert await claim(queue, "gw_a") == [job.id]
    clock.advance(20)
    assert await queue.renew("gw_a", [job.id], lease=LEASE) == {job.id}
    clock.advance(29)  # the renewed lease still holds
    assert await claim(queue, "gw_b") == []
    clock.advance(2)
    claimed = await queue.claim("gw_b", limit=5, lease=LEASE, max_processing_per_account=1)
    assert [(c.id, c.retries) for c in claimed] == [(job.id, 1)]
    assert await queue.renew("gw_a", [job.id], lease=LEASE) == set()
    assert not await queue.complete("gw_a", job.id, result_json="{}", retention=RETENTION)
    assert await queue.complete("gw_b", job.id, result_json="{}", retention=RETENTION)
    first = await queue.get(alice, job.id)
    assert first is not None and first.started_at == job.created_at  # the first start stays


async def test_a_job_ends_only_by_the_holder_of_its_lease(
    queue: JobQueue, database: Database, new_account: NewAccount, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    job = await enqueue(alice)
    await claim(queue, "gw_a")
    assert not await queue.complete("gw_b", job.id, result_json="{}", retention=RETENTION)
    assert not await queue.retry(
        "gw_b", job.id, error_code="x", error_message="x", available_at=job.created_at
    )
    assert (
        await queue.finish(
            "gw_b", job.id, status="failed", error_code="x", error_message="x", retention=RETENTION
        )
        is None
    )
    stored = await row(database, job.id)
    assert stored is not None
    assert (stored.status, stored.lease_owner, stored.request) == ("processing", "gw_a", REQUEST)


async def test_complete_keeps_the_result_and_drops_the_prompt(
    queue: JobQueue, database: Database, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    job = await enqueue(alice)
    await claim(queue)
    clock.advance(5)
    assert await queue.complete("gw_a", job.id, result_json='{"id":"c"}', retention=RETENTION)
    done = await queue.get(alice, job.id)
    assert done is not None and done.final
    assert (done.status, done.result_json) == ("complete", '{"id":"c"}')
    assert (done.completed_at, done.purge_at) == (clock.now, clock.now + RETENTION)
    stored = await row(database, job.id)
    assert stored is not None and stored.request is None and stored.lease_owner is None
    assert not await queue.complete("gw_a", job.id, result_json="{}", retention=RETENTION)


async def test_retry_puts_the_job_back_until_it_is_due(
    queue: JobQueue, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    job = await enqueue(alice)
    await claim(queue)
    later = clock.now + timedelta(seconds=10)
    long_message = "m" * 900
    assert await queue.retry(
        "gw_a", job.id, error_code="worker_lost", error_message=long_message, available_at=later
    )
    queued = await queue.get(alice, job.id)
    assert queued is not None
    assert (queued.status, queued.retries, queued.error_code) == ("queued", 1, "worker_lost")
    assert queued.error_message == "m" * 500
    assert await claim(queue, "gw_b") == []
    clock.advance(10)
    claimed = await queue.claim("gw_b", limit=1, lease=LEASE, max_processing_per_account=1)
    assert [(c.id, c.retries, c.request_json) for c in claimed] == [(job.id, 1, REQUEST)]


async def test_finish_ends_a_job_as_a_failure(
    queue: JobQueue, database: Database, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    running, waiting = await enqueue(alice), await enqueue(alice)
    await claim(queue, limit=1)
    dead = await queue.finish(
        "gw_a", running.id, status="dead", error_code="e", error_message="gone", retention=RETENTION
    )
    assert dead is not None and (dead.status, dead.error_message) == ("dead", "gone")
    failed = await queue.finish(
        None, waiting.id, status="failed", error_code="bad", error_message=None, retention=RETENTION
    )
    assert failed is not None and failed.status == "failed" and failed.purge_at is not None
    for job in (running, waiting):
        stored = await row(database, job.id)
        assert stored is not None and stored.request is None
    again = await queue.finish(
        None, waiting.id, status="expired", error_code=None, error_message=None
    )
    assert again is None
    with pytest.raises(ValueError):
        await queue.finish(None, waiting.id, status="complete", error_code=None, error_message=None)  # type: ignore[arg-type]


# --- cancel, expiry, purge, stats ------------------------------------------------------


async def test_cancel_in_each_state(
    queue: JobQueue, database: Database, new_account: NewAccount, enqueue: Enqueue
) -> None:
    alice, bob = await new_account("alice"), await new_account("bob")
    running = await enqueue(alice, hold_id="h_run", held=10)
    waiting = await enqueue(alice, hold_id="h_wait", held=20)
    await claim(queue, limit=1)

    outcome = await queue.cancel(alice, waiting.id, retention=RETENTION)
    assert outcome.status == "cancelled" and outcome.job is not None
    assert (outcome.job.status, outcome.job.hold_id, outcome.job.held) == (
        "cancelled",
        "h_wait",
        20,
    )
    stored = await row(database, waiting.id)
    assert stored is not None and stored.request is None

    outcome = await queue.cancel(alice, running.id, retention=RETENTION)
    assert outcome.status == "stopping" and outcome.job is not None
    assert outcome.job.status == "processing" and outcome.job.cancel_requested
    assert await queue.renew("gw_a", [running.id], lease=LEASE) == set()  # the runner stops
    assert not await queue.retry(
        "gw_a", running.id, error_code="x", error_message="x", available_at=running.created_at
    )
    ended = await queue.finish(
        "gw_a", running.id, status="cancelled", error_code=None, error_message=None
    )
    assert ended is not None and ended.status == "cancelled"

    finished = await queue.cancel(alice, running.id)
    assert finished.status == "finished" and finished.job is not None
    assert (await queue.cancel(bob, waiting.id)).status == "not_found"
    assert await queue.cancel(alice, "job_missing") == CancelOutcome("not_found", None)


async def test_a_cancelled_job_whose_runner_died_is_swept(
    queue: JobQueue, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    job = await enqueue(alice)
    await claim(queue)
    await queue.cancel(alice, job.id)
    clock.advance(LEASE.total_seconds() + 1)
    assert await claim(queue, "gw_b") == []  # a job to cancel does not run again
    [swept] = await queue.expire_due(retention=RETENTION)
    assert (swept.id, swept.status) == (job.id, "cancelled")


async def test_queued_jobs_past_their_deadline_expire(
    queue: JobQueue, database: Database, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    soon = clock.now + timedelta(seconds=10)
    started = await enqueue(alice, deadline_at=soon)
    late = await enqueue(alice, deadline_at=soon, hold_id="h_late", held=3)
    free = await enqueue(alice)
    assert await claim(queue, limit=1) == [started.id]
    assert await queue.expire_due(retention=RETENTION) == []
    clock.advance(10)
    assert await claim(queue, "gw_b", limit=1) == [free.id]  # a late job does not start
    [expired] = await queue.expire_due(retention=RETENTION)
    assert (expired.id, expired.status, expired.hold_id) == (late.id, "expired", "h_late")
    assert expired.error_code == "job_expired"
    stored = await row(database, late.id)
    assert stored is not None and stored.request is None
    running = await queue.get(alice, started.id)
    assert running is not None and running.status == "processing"  # it started in time
    assert await queue.expire_due(retention=RETENTION) == []


async def test_purge_deletes_ended_jobs_after_their_retention(
    queue: JobQueue, database: Database, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    kept = await enqueue(alice)
    done = await enqueue(alice, webhook_url="https://x.test/h")
    await claim(queue)
    await queue.complete("gw_a", done.id, result_json="{}", retention=timedelta(seconds=60))
    assert len(await deliveries(database)) == 1
    clock.advance(59)
    assert await queue.purge() == 0
    clock.advance(1)
    assert await queue.purge() == 1
    assert await queue.get(alice, done.id) is None
    assert await deliveries(database) == []  # its events go with it
    assert await queue.get(alice, kept.id) is not None


async def test_stats_count_the_queue(
    queue: JobQueue, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    empty = await queue.stats()
    assert empty.oldest_queued_age is None and set(empty.counts.values()) == {0}
    first = await enqueue(alice, webhook_url="https://x.test/h")
    clock.advance(5)
    second = await enqueue(alice)
    await enqueue(alice)
    clock.advance(5)
    assert await claim(queue, limit=2) == [first.id, second.id]
    await queue.complete("gw_a", first.id, result_json="{}", retention=RETENTION)
    stats = await queue.stats()
    assert stats.counts["queued"] == stats.counts["processing"] == stats.counts["complete"] == 1
    assert stats.oldest_queued_age == 5.0
    assert (stats.completed_last_minute, stats.deliveries_pending) == (1, 1)
    clock.advance(61)
    assert (await queue.stats()).completed_last_minute == 0


# --- webhook deliveries ----------------------------------------------------------------


async def test_each_final_status_records_its_event(
    queue: JobQueue, database: Database, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    hook = {"webhook_url": "https://x.test/h"}
    done, dead, waiting = [await enqueue(alice, **hook) for _ in range(3)]
    late = await enqueue(alice, deadline_at=clock.now + timedelta(seconds=1), **hook)
    silent = await enqueue(alice)
    await claim(queue, limit=2)
    await queue.complete("gw_a", done.id, result_json="{}", retention=RETENTION)
    await queue.finish("gw_a", dead.id, status="dead", error_code="e", error_message="m")
    await queue.cancel(alice, waiting.id)
    clock.advance(1)
    await queue.expire_due()
    await queue.finish(None, silent.id, status="failed", error_code="e", error_message="m")
    events = {d.job_id: d for d in await deliveries(database)}
    assert {job_id: d.event_type for job_id, d in events.items()} == {
        done.id: "job.complete",
        dead.id: "job.dead",
        waiting.id: "job.cancelled",
        late.id: "job.expired",
    }
    body = json.loads(events[dead.id].payload)
    assert body["id"] == events[dead.id].id and body["id"].startswith("evt_")
    assert body["type"] == "job.dead" and body["object"] == "event"
    assert body["data"] == {
        "id": dead.id,
        "status": "dead",
        "model": "m",
        "error": {"code": "e", "message": "m"},
    }
    assert {d.status for d in events.values()} == {"pending"}


async def test_the_event_and_the_status_change_are_one_transaction(
    database: Database, new_account: NewAccount, clock: Clock
) -> None:
    def broken(event: JobEvent) -> str:
        raise RuntimeError("cannot render")

    queue = JobQueue(database, clock=clock, render_event=broken)
    alice = await new_account("alice")
    job = await _enqueue(queue, alice, webhook_url="https://x.test/h")
    await claim(queue)
    with pytest.raises(RuntimeError):
        await queue.complete("gw_a", job.id, result_json="{}", retention=RETENTION)
    stored = await row(database, job.id)
    assert stored is not None
    assert (stored.status, stored.result, stored.request) == ("processing", None, REQUEST)
    assert await deliveries(database) == []


async def test_deliveries_are_leased_retried_and_given_up(
    queue: JobQueue, database: Database, new_account: NewAccount, clock: Clock, enqueue: Enqueue
) -> None:
    alice = await new_account("alice")
    jobs = [await enqueue(alice, webhook_url=f"https://x.test/{n}") for n in range(2)]
    await claim(queue)
    for job in jobs:
        await queue.complete("gw_a", job.id, result_json="{}", retention=RETENTION)
        clock.advance(1)
    first, second = await queue.claim_deliveries("s_a", limit=10, lease=LEASE)
    assert (first.url, first.attempts, first.event_type) == ("https://x.test/0", 1, "job.complete")
    assert first.lease_expires_at == clock.now + LEASE
    assert await queue.claim_deliveries("s_b", limit=10, lease=LEASE) == []  # leased

    assert not await queue.delivered("s_b", first.id)
    assert await queue.delivered("s_a", first.id)
    delivered_at = clock.now
    retry_at = clock.now + timedelta(seconds=10)
    assert await queue.delivery_failed("s_a", second.id, error="503", next_attempt_at=retry_at)
    clock.advance(9)
    assert await queue.claim_deliveries("s_b", limit=10, lease=LEASE) == []
    clock.advance(1)
    [again] = await queue.claim_deliveries("s_b", limit=10, lease=LEASE)
    assert (again.id, again.attempts, again.payload) == (second.id, 2, second.payload)

    clock.advance(LEASE.total_seconds())  # the sender died: the lease lapses
    [third] = await queue.claim_deliveries("s_c", limit=10, lease=LEASE)
    assert (third.id, third.attempts) == (second.id, 3)
    assert not await queue.delivery_failed("s_b", second.id, error="x", next_attempt_at=None)
    assert await queue.delivery_failed("s_c", second.id, error="e" * 600, next_attempt_at=None)
    clock.advance(3600)
    assert await queue.claim_deliveries("s_c", limit=10, lease=LEASE) == []
    stored = {d.id: d for d in await deliveries(database)}
    assert (stored[first.id].status, stored[first.id].delivered_at) == ("delivered", delivered_at)
    assert stored[second.id].status == "failed"
    assert stored[second.id].last_error == "e" * 500
    assert (await queue.stats()).deliveries_pending == 0


# --- several gateways at once -----------------------------------------------------------


async def _drain(queue: JobQueue, owner: str, cap: int) -> list[str]:
    """Claim until a claim comes back empty."""
    taken: list[str] = []
    while ids := await claim(queue, owner, limit=7, cap=cap):
        taken += ids
    return taken


async def _fill(queue: JobQueue, accounts: list[int], per_account: int) -> set[str]:
    jobs = set()
    for _ in range(per_account):
        for account in accounts:
            jobs.add((await _enqueue(queue, account)).id)
    return jobs


async def _processing_by_account(database: Database) -> dict[int, int]:
    query = (
        select(AsyncJob.account_id, func.count())
        .where(AsyncJob.status == "processing")
        .group_by(AsyncJob.account_id)
    )
    async with database.session(read_only=True) as session:
        return {account: count for account, count in await session.execute(query)}


async def test_gateways_claiming_at_once_take_each_job_once(
    connections: list[Database], new_account: NewAccount, clock: Clock
) -> None:
    queues = [JobQueue(db, clock=clock) for db in connections]
    accounts = [await new_account(f"a{n}") for n in range(5)]
    jobs = await _fill(queues[0], accounts, 20)
    taken = await asyncio.gather(*(_drain(q, f"gw_{n}", 100) for n, q in enumerate(queues)))
    taken.append(await _drain(queues[0], "gw_last", 100))  # what was locked when one looked
    claimed = [job_id for ids in taken for job_id in ids]
    assert len(claimed) == len(jobs) == 100
    assert set(claimed) == jobs


async def test_gateways_claiming_at_once_keep_the_account_limit(
    connections: list[Database], new_account: NewAccount, clock: Clock
) -> None:
    queues = [JobQueue(db, clock=clock) for db in connections]
    accounts = [await new_account(f"a{n}") for n in range(5)]
    await _fill(queues[0], accounts, 10)
    taken = await asyncio.gather(*(_drain(q, f"gw_{n}", 3) for n, q in enumerate(queues)))
    taken.append(await _drain(queues[0], "gw_last", 3))
    claimed = [job_id for ids in taken for job_id in ids]
    assert len(claimed) == len(set(claimed)) == 15
    assert await _processing_by_account(connections[0]) == dict.fromkeys(accounts, 3)
