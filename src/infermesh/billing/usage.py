"""Reading usage records: one row per request, counts and cost only (never content)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.sql.elements import ColumnElement

from infermesh.errors import InvalidRequest, NotFound
from infermesh.store import Account, Database, UsageEntry
from infermesh.store.tables import RegisteredWorker

MAX_PAGE = 100


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one request used and cost."""

    id: str
    request_id: str
    created_at: datetime
    model: str
    key_id: str | None
    node_id: str | None
    worker_id: str | None
    stream: bool
    status: str
    error_code: str | None
    finish_reason: str | None
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    cost: int
    latency_ms: int


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Totals over a set of requests."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: int


@dataclass(frozen=True, slots=True)
class WorkerEarnings:
    """What one registered worker was paid for, and its operator."""

    worker_id: str
    worker_name: str
    operator: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    billed: int
    earned: int


class UsageLog:
    """Queries over the usage records of accounts and workers."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(
        self, account_id: int, *, limit: int = 20, after: str | None = None
    ) -> tuple[list[UsageRecord], bool]:
        """The account's records, newest first, ``limit`` at a time; and whether more exist.

        ``after`` is the id of the last record of the previous page.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
        query = select(UsageEntry).where(UsageEntry.account_id == account_id)
        async with self._db.session(read_only=True) as session:
            if after is not None:
                cursor = await session.get(UsageEntry, after)
                if cursor is None or cursor.account_id != account_id:
                    raise InvalidRequest(f"No usage record '{after}' to page after.", param="after")
                query = query.where(_older_than(cursor))
            query = query.order_by(UsageEntry.created_at.desc(), UsageEntry.id.desc())
            rows = (await session.scalars(query.limit(limit + 1))).all()
        return [_record(row) for row in rows[:limit]], len(rows) > limit

    async def get(self, account_id: int, record_id: str) -> UsageRecord:
        """One of the account's records, by the completion id (or the request id)."""
        query = select(UsageEntry).where(
            UsageEntry.account_id == account_id,
            (UsageEntry.id == record_id) | (UsageEntry.request_id == record_id),
        )
        async with self._db.session(read_only=True) as session:
            row = (await session.scalars(query.order_by(UsageEntry.created_at.desc()))).first()
        if row is None:
            raise NotFound(f"No usage record '{record_id}'.", param="id")
        return _record(row)

    async def totals(self, account_id: int, *, since: datetime | None = None) -> UsageTotals:
        """Totals of the account's requests, since ``since`` if given."""
        query = _totals_query().where(UsageEntry.account_id == account_id)
        if since is not None:
            query = query.where(UsageEntry.created_at >= since)
        async with self._db.session(read_only=True) as session:
            requests, prompt, completion, cost = (await session.execute(query)).one()
        return UsageTotals(int(requests), int(prompt), int(completion), int(cost))

    async def earnings(self, *, operator: str | None = None) -> list[WorkerEarnings]:
        """Per registered worker: requests it served (all but failed ones, free ones
        too), their tokens, what they were billed and what the operator earned."""
        query = (
            select(
                RegisteredWorker.id,
                RegisteredWorker.name,
                Account.name,
                func.count(UsageEntry.id),
                func.coalesce(func.sum(UsageEntry.prompt_tokens), 0),
                func.coalesce(func.sum(UsageEntry.completion_tokens), 0),
                func.coalesce(func.sum(UsageEntry.cost), 0),
                func.coalesce(func.sum(UsageEntry.operator_earning), 0),
            )
            .join(Account, RegisteredWorker.operator_account_id == Account.id)
            .outerjoin(
                UsageEntry,
                (UsageEntry.worker_id == RegisteredWorker.id) & (UsageEntry.status != "failed"),
            )
            .group_by(RegisteredWorker.id, RegisteredWorker.name, Account.name)
            .order_by(Account.name, RegisteredWorker.name, RegisteredWorker.id)
        )
        if operator is not None:
            query = query.where(Account.name == operator)
        async with self._db.session(read_only=True) as session:
            rows = (await session.execute(query)).all()
        return [
            WorkerEarnings(
                worker_id=row[0],
                worker_name=row[1],
                operator=row[2],
                requests=int(row[3]),
                prompt_tokens=int(row[4]),
                completion_tokens=int(row[5]),
                billed=int(row[6]),
                earned=int(row[7]),
            )
            for row in rows
        ]


def _totals_query() -> Select[int, int, int, int]:
    return select(
        func.count(UsageEntry.id),
        func.coalesce(func.sum(UsageEntry.prompt_tokens), 0),
        func.coalesce(func.sum(UsageEntry.completion_tokens), 0),
        func.coalesce(func.sum(UsageEntry.cost), 0),
    )


def _older_than(cursor: UsageEntry) -> ColumnElement[bool]:
    return (UsageEntry.created_at < cursor.created_at) | (
        (UsageEntry.created_at == cursor.created_at) & (UsageEntry.id < cursor.id)
    )


def _record(row: UsageEntry) -> UsageRecord:
    return UsageRecord(
        id=row.id,
        request_id=row.request_id,
        created_at=row.created_at,
        model=row.model,
        key_id=row.key_id,
        node_id=row.node_id,
        worker_id=row.worker_id,
        stream=row.stream,
        status=row.status,
        error_code=row.error_code,
        finish_reason=row.finish_reason,
        endpoint=row.endpoint,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost=row.cost,
        latency_ms=row.latency_ms,
    )
