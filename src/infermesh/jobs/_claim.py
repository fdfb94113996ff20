"""How one claim transaction picks due jobs: oldest first, within each account's limit
of jobs processing at once, beside other gateways claiming from the same queue.

Due rows are locked with ``FOR UPDATE SKIP LOCKED`` (so two claims never take the same
job), and on PostgreSQL an account's jobs are taken only under a try-lock of the
account, held to the end of the transaction: a claim counts the account's processing
jobs after taking that lock, so two claims cannot both fill its last slot. An account
locked by another claim is skipped this time. On SQLite the claim is the only writer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.jobs.records import ClaimedJob
from infermesh.store import AsyncJob
from infermesh.store.tables import UTCDateTime

PerAccountLimit = Callable[[int], int]
"""The most jobs an account (by id) may have processing at once."""

_TRY_LOCKS = text(
    "SELECT k FROM unnest(:keys) AS t(k) WHERE pg_try_advisory_xact_lock(k)"
).bindparams(bindparam("keys", type_=ARRAY(BigInteger())))


class Claimer:
    """One claim transaction's view of the accounts: how many jobs each has
    processing, and which are left out (at their limit, or being claimed for by
    another transaction)."""

    def __init__(
        self, session: AsyncSession, now: datetime, limit: PerAccountLimit, *, postgres: bool
    ) -> None:
        self._session = session
        self._now = now
        self._limit = limit
        self._postgres = postgres
        self._running: dict[int, int] = {}
        self._skipped: set[int] = set()

    async def start(self) -> None:
        """Leave out from the start the accounts already at their limit (a hint: an
        account's count is taken again once it is locked)."""
        counts = await _processing(self._session, self._now, None)
        self._skipped = {
            account for account, count in counts.items() if count >= self._limit(account)
        }

    async def choose(self, wanted: int) -> list[str] | None:
        """Up to ``wanted`` due jobs to take, oldest first, within their accounts'
        limits (locked, to take in this transaction). None: no due job is left."""
        rows = await _due(self._session, self._now, self._skipped, window=2 * wanted)
        if not rows:
            return None
        await self._admit({account for _, account in rows} - self._running.keys() - self._skipped)
        chosen: list[str] = []
        for job_id, account in rows:
            if len(chosen) == wanted:
                break
            if account in self._skipped:
                continue
            if self._running[account] >= self._limit(account):
                self._skipped.add(account)
                continue
            self._running[account] += 1
            chosen.append(job_id)
        return chosen

    async def _admit(self, accounts: set[int]) -> None:
        """Lock these accounts for this claim (on PostgreSQL only those no other claim
        holds; the rest are left out) and count their jobs processing now."""
        if not accounts:
            return
        if self._postgres:
            locked = await _try_lock_accounts(self._session, accounts)
            self._skipped |= accounts - locked
            accounts = locked
        counts = await _processing(self._session, self._now, accounts)
        self._running.update({account: counts.get(account, 0) for account in accounts})


async def take(
    session: AsyncSession, ids: list[str], owner: str, now: datetime, expires: datetime
) -> list[ClaimedJob]:
    """Give these (locked) jobs to ``owner`` until ``expires``; a job taken back from
    a lapsed lease counts one more retry."""
    if not ids:
        return []
    statement = (
        update(AsyncJob)
        .where(AsyncJob.id.in_(ids))
        .values(
            status="processing",
            retries=case(
                (AsyncJob.status == "processing", AsyncJob.retries + 1), else_=AsyncJob.retries
            ),
            lease_owner=owner,
            lease_expires_at=expires,
            started_at=func.coalesce(AsyncJob.started_at, literal(now, UTCDateTime())),
            updated_at=now,
        )
        .returning(
            AsyncJob.created_at,
            AsyncJob.id,
            AsyncJob.account_id,
            AsyncJob.key_id,
            AsyncJob.model,
            AsyncJob.request,
            AsyncJob.hold_id,
            AsyncJob.held,
            AsyncJob.retries,
            AsyncJob.webhook_url,
            AsyncJob.deadline_at,
        )
        .execution_options(synchronize_session=False)
    )
    rows = sorted(await session.execute(statement))
    return [
        ClaimedJob(
            id=job_id,
            account_id=account_id,
            key_id=key_id,
            model=model,
            request_json=request or "",
            hold_id=hold_id,
            held=held,
            retries=retries,
            webhook_url=webhook_url,
            deadline_at=deadline_at,
            lease_expires_at=expires,
        )
        for (
            _created,
            job_id,
            account_id,
            key_id,
            model,
            request,
            hold_id,
            held,
            retries,
            webhook_url,
            deadline_at,
        ) in rows
    ]


async def _due(
    session: AsyncSession, now: datetime, skipped: set[int], *, window: int
) -> list[tuple[str, int]]:
    """The oldest ``window`` due jobs (id, account) of accounts not left out, locked."""
    queued = and_(
        AsyncJob.status == "queued",
        AsyncJob.available_at <= now,
        or_(AsyncJob.deadline_at.is_(None), AsyncJob.deadline_at > now),
    )
    lapsed = and_(
        AsyncJob.status == "processing",
        AsyncJob.lease_expires_at < now,
        AsyncJob.cancel_requested == false(),
    )
    rows: list[tuple[datetime, str, int]] = []
    for condition in (queued, lapsed):
        query = select(AsyncJob.created_at, AsyncJob.id, AsyncJob.account_id).where(condition)
        if skipped:
            query = query.where(AsyncJob.account_id.not_in(sorted(skipped)))
        query = (
            query.order_by(AsyncJob.created_at, AsyncJob.id)
            .limit(window)
            .with_for_update(skip_locked=True)
        )
        rows.extend(
            (created, job_id, account) for created, job_id, account in await session.execute(query)
        )
    rows.sort()
    return [(job_id, account) for _, job_id, account in rows[:window]]


async def _processing(
    session: AsyncSession, now: datetime, accounts: set[int] | None
) -> dict[int, int]:
    """Jobs processing under a live lease, by account (of ``accounts``, or all)."""
    query = (
        select(AsyncJob.account_id, func.count())
        .where(AsyncJob.status == "processing", AsyncJob.lease_expires_at >= now)
        .group_by(AsyncJob.account_id)
    )
    if accounts is not None:
        query = query.where(AsyncJob.account_id.in_(sorted(accounts)))
    return {account: int(count) for account, count in await session.execute(query)}


async def _try_lock_accounts(session: AsyncSession, accounts: set[int]) -> set[int]:
    """Which of these accounts this transaction now holds the claim lock of."""
    keys = {_lock_key(f"infermesh.jobs.claim.{account}"): account for account in accounts}
    result = await session.execute(_TRY_LOCKS, {"keys": sorted(keys)})
    return {keys[key] for (key,) in result}


def _lock_key(name: str) -> int:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
