"""Failed requests across every account, newest first: what the admin's Errors page reads.

The usage log (:mod:`infermesh.billing.usage`) reads one account's records; this reads
the records that ended ``failed``, of any account, with the account's name beside each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.sql.elements import ColumnElement

from infermesh.errors import InvalidRequest
from infermesh.store import Account, Database, UsageEntry

MAX_PAGE = 100
MAX_CODES = 100
_MAX_FILTER_TEXT = 200


@dataclass(frozen=True, slots=True)
class FailedRequest:
    """One request that failed: when, whose, what it asked for and what went wrong."""

    id: str
    request_id: str
    created_at: datetime
    account_id: int
    account: str
    key_id: str | None
    model: str
    endpoint: str
    stream: bool
    error_code: str | None
    node_id: str | None
    worker_id: str | None
    latency_ms: int


class FailedRequestLog:
    """Reads the failed requests of every account from the usage records."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(
        self,
        *,
        limit: int = 50,
        after: str | None = None,
        error_code: str | None = None,
        model: str | None = None,
    ) -> tuple[list[FailedRequest], bool]:
        """Failed requests (of ``error_code`` and ``model`` if given), newest first,
        ``limit`` at a time; and whether more exist. ``after`` is the id of the last
        record of the previous page."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
        query = (
            select(UsageEntry, Account.name)
            .join(Account, UsageEntry.account_id == Account.id)
            .where(UsageEntry.status == "failed", *_matching(error_code, model))
        )
        async with self._db.session(read_only=True) as session:
            if after is not None:
                cursor = await session.get(UsageEntry, after)
                if cursor is None or cursor.status != "failed":
                    raise InvalidRequest(
                        f"No failed request '{after}' to page after.", param="after"
                    )
                query = query.where(_older_than(cursor))
            query = query.order_by(UsageEntry.created_at.desc(), UsageEntry.id.desc())
            rows = (await session.execute(query.limit(limit + 1))).all()
        return [_failed(entry, account) for entry, account in rows[:limit]], len(rows) > limit

    async def error_codes(self) -> list[str]:
        """The error codes failed requests were recorded with (at most :data:`MAX_CODES`)."""
        query = (
            select(UsageEntry.error_code)
            .where(UsageEntry.status == "failed", UsageEntry.error_code.is_not(None))
            .distinct()
            .order_by(UsageEntry.error_code)
            .limit(MAX_CODES)
        )
        async with self._db.session(read_only=True) as session:
            codes = (await session.scalars(query)).all()
        return [code for code in codes if code is not None]


def _matching(error_code: str | None, model: str | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    for name, column, value in (
        ("error_code", UsageEntry.error_code, error_code),
        ("model", UsageEntry.model, model),
    ):
        if value is None:
            continue
        if not 0 < len(value) <= _MAX_FILTER_TEXT:
            raise InvalidRequest(f"{name} must be 1 to {_MAX_FILTER_TEXT} characters.", param=name)
        conditions.append(column == value)
    return conditions


def _older_than(cursor: UsageEntry) -> ColumnElement[bool]:
    return (UsageEntry.created_at < cursor.created_at) | (
        (UsageEntry.created_at == cursor.created_at) & (UsageEntry.id < cursor.id)
    )


def _failed(entry: UsageEntry, account: str) -> FailedRequest:
    return FailedRequest(
        id=entry.id,
        request_id=entry.request_id,
        created_at=entry.created_at,
        account_id=entry.account_id,
        account=account,
        key_id=entry.key_id,
        model=entry.model,
        endpoint=entry.endpoint,
        stream=entry.stream,
        error_code=entry.error_code,
        node_id=entry.node_id,
        worker_id=entry.worker_id,
        latency_ms=entry.latency_ms,
    )
