"""Reading usage records: one row per request, counts and cost only (never content)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    cast,
    extract,
    func,
    literal_column,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from infermesh.errors import InvalidRequest, NotFound
from infermesh.store import Account, Database, UsageEntry, utcnow
from infermesh.store.tables import RegisteredWorker

MAX_PAGE = 100
SeriesBucket = Literal["hour", "day"]
BUCKET_SECONDS: dict[SeriesBucket, int] = {"hour": 3600, "day": 86400}
MAX_BUCKETS = 1000
"""The most buckets one series may have (about six weeks by hour, three years by day)."""
USAGE_STATUSES = ("succeeded", "failed", "cancelled")
"""How a request ended, as its record says."""
USAGE_ENDPOINTS = ("chat.completions", "responses", "messages", "embeddings")
"""The APIs a request can come through."""
_MAX_FILTER_TEXT = 200


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
class UsageFilter:
    """Which of an account's records to list: each field given narrows the list.

    ``since`` is inclusive and ``until`` exclusive (both timezone-aware). Raises
    :class:`InvalidRequest` for a status or endpoint that no record can have, text
    longer than a column, or an empty time range.
    """

    model: str | None = None
    status: str | None = None
    endpoint: str | None = None
    key_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        _check_choice("status", self.status, USAGE_STATUSES)
        _check_choice("endpoint", self.endpoint, USAGE_ENDPOINTS)
        for name in ("model", "key_id"):
            value = getattr(self, name)
            if value is not None and not 0 < len(value) <= _MAX_FILTER_TEXT:
                raise InvalidRequest(
                    f"{name} must be 1 to {_MAX_FILTER_TEXT} characters.", param=name
                )
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidRequest("since must be before until.", param="since")


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Totals over a set of requests."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: int


@dataclass(frozen=True, slots=True)
class SpendPoint:
    """An account's usage in one hour or day (UTC), which begins at ``start``."""

    start: datetime
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


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


@dataclass(frozen=True, slots=True)
class EarningPoint:
    """What an operator's workers served in one hour or day (UTC), which begins at
    ``start``: requests (all but failed ones), what they were billed and what the
    operator earned."""

    start: datetime
    requests: int
    billed: int
    earned: int


class UsageLog:
    """Queries over the usage records of accounts and workers."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(
        self,
        account_id: int,
        *,
        limit: int = 20,
        after: str | None = None,
        matching: UsageFilter | None = None,
    ) -> tuple[list[UsageRecord], bool]:
        """The account's records (those ``matching`` if given), newest first, ``limit``
        at a time; and whether more exist.

        ``after`` is the id of the last record of the previous page.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
        query = select(UsageEntry).where(UsageEntry.account_id == account_id)
        if matching is not None:
            query = query.where(*_conditions(matching))
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

    async def spend_series(
        self,
        account_id: int,
        *,
        since: datetime,
        bucket: SeriesBucket,
        until: datetime | None = None,
    ) -> list[SpendPoint]:
        """The account's requests, tokens and cost per hour or per day (UTC), from the
        bucket that holds ``since`` to the one that holds ``until`` (now), oldest first.

        Every bucket is there, empty ones as zeros; records count from ``since``, so the
        series adds up to :meth:`totals` over the same time. Summed by the database, one
        row per bucket; :class:`InvalidRequest` beyond :data:`MAX_BUCKETS` buckets.
        """
        size = BUCKET_SECONDS[bucket]
        first = _bucket_of(since, size)
        last = _bucket_of(until or utcnow(), size)
        if not 0 <= last - first < MAX_BUCKETS:
            raise InvalidRequest(
                f"A usage series has between 1 and {MAX_BUCKETS} buckets; "
                f"this one would have {last - first + 1}.",
                param="since",
            )
        index = _bucket_index(self._db.dialect, size)
        query = (
            _totals_query()
            .add_columns(index)
            .where(
                UsageEntry.account_id == account_id,
                UsageEntry.created_at >= since,
                UsageEntry.created_at < _bucket_start(last + 1, size),
            )
            .group_by(index)
        )
        async with self._db.session(read_only=True) as session:
            rows = (await session.execute(query)).all()
        sums = {int(row[4]): row for row in rows}
        return [
            _point(_bucket_start(number, size), sums.get(number))
            for number in range(first, last + 1)
        ]

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

    async def earnings_series(
        self,
        operator_account_id: int,
        *,
        since: datetime,
        bucket: SeriesBucket,
        until: datetime | None = None,
    ) -> list[EarningPoint]:
        """What the workers of the operator ``operator_account_id`` served and earned per
        hour or per day (UTC), every bucket from the one holding ``since`` to the one
        holding ``until`` (now), oldest first, empty ones as zeros; counted as
        :meth:`earnings` counts (failed requests left out). :class:`InvalidRequest`
        beyond :data:`MAX_BUCKETS` buckets."""
        size = BUCKET_SECONDS[bucket]
        first, last = _bucket_of(since, size), _bucket_of(until or utcnow(), size)
        if not 0 <= last - first < MAX_BUCKETS:
            raise InvalidRequest(
                f"An earnings series has between 1 and {MAX_BUCKETS} buckets; "
                f"this one would have {last - first + 1}.",
                param="since",
            )
        index = _bucket_index(self._db.dialect, size)
        workers = select(RegisteredWorker.id).where(
            RegisteredWorker.operator_account_id == operator_account_id
        )
        query = (
            select(
                func.count(UsageEntry.id),
                func.coalesce(func.sum(UsageEntry.cost), 0),
                func.coalesce(func.sum(UsageEntry.operator_earning), 0),
                index,
            )
            .where(
                UsageEntry.worker_id.in_(workers),
                UsageEntry.status != "failed",
                UsageEntry.created_at >= since,
                UsageEntry.created_at < _bucket_start(last + 1, size),
            )
            .group_by(index)
        )
        async with self._db.session(read_only=True) as session:
            rows = (await session.execute(query)).all()
        sums = {int(row[3]): row for row in rows}
        return [
            _earning_point(_bucket_start(number, size), sums.get(number))
            for number in range(first, last + 1)
        ]


def _totals_query() -> Select[int, int, int, int]:
    return select(
        func.count(UsageEntry.id),
        func.coalesce(func.sum(UsageEntry.prompt_tokens), 0),
        func.coalesce(func.sum(UsageEntry.completion_tokens), 0),
        func.coalesce(func.sum(UsageEntry.cost), 0),
    )


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise InvalidRequest(
            f"{name} must be one of {', '.join(choices)}; not '{value[:50]}'.", param=name
        )


def _conditions(matching: UsageFilter) -> list[ColumnElement[bool]]:
    """``matching`` as SQL conditions on :class:`UsageEntry`."""
    conditions: list[ColumnElement[bool]] = []
    for column, value in (
        (UsageEntry.model, matching.model),
        (UsageEntry.status, matching.status),
        (UsageEntry.endpoint, matching.endpoint),
        (UsageEntry.key_id, matching.key_id),
    ):
        if value is not None:
            conditions.append(column == value)
    if matching.since is not None:
        conditions.append(UsageEntry.created_at >= matching.since)
    if matching.until is not None:
        conditions.append(UsageEntry.created_at < matching.until)
    return conditions


def _bucket_of(moment: datetime, size: int) -> int:
    """The number of the bucket of ``size`` seconds holding ``moment`` (0 at the epoch)."""
    return int(moment.timestamp()) // size


def _bucket_start(number: int, size: int) -> datetime:
    return datetime.fromtimestamp(number * size, UTC)


def _bucket_index(dialect: str, size: int) -> ColumnElement[int]:
    """The bucket number of each record's time, in SQL. ``size`` is written into the
    statement, not bound: PostgreSQL groups by an expression only if it is the very one
    selected, and two bound parameters would make it two."""
    divisor = literal_column(str(int(size)), Integer)
    if dialect == "postgresql":
        seconds = extract("epoch", UsageEntry.created_at)  # with fractions
        return cast(func.floor(seconds / divisor), BigInteger)
    # SQLite keeps the time as text; cut to whole seconds first, as its own parsing
    # rounds to milliseconds (23:59:59.9999 would fall into the next day).
    whole = func.strftime("%s", func.substr(UsageEntry.created_at, 1, 19))
    return cast(whole, Integer) // divisor


def _point(start: datetime, row: Sequence[Any] | None) -> SpendPoint:
    if row is None:
        return SpendPoint(start, 0, 0, 0, 0)
    requests, prompt, completion, cost, _bucket = row
    return SpendPoint(start, int(requests), int(prompt), int(completion), int(cost))


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


def _earning_point(start: datetime, row: Sequence[Any] | None) -> EarningPoint:
    if row is None:
        return EarningPoint(start, 0, 0, 0)
    requests, billed, earned, _bucket = row
    return EarningPoint(start, int(requests), int(billed), int(earned))
