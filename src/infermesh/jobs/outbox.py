"""The webhook events of jobs: each is written in the transaction that ends its job
(so none is lost in a crash), then leased to a sender until it is delivered or given
up. A sender that dies leaves its deliveries to be claimed again when the lease lapses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.jobs._bounds import ERROR_MESSAGE_SIZE, check_owner, clamp, cut, new_id
from infermesh.jobs.records import DeliveryRecord, JobEvent, JobRecord
from infermesh.store import Database, WebhookDelivery

MAX_CLAIM = 100

EventRenderer = Callable[[JobEvent], str]
"""Makes a webhook's JSON body from an event."""


def event_json(event: JobEvent) -> str:
    """A thin event, as OpenAI's webhooks send: what happened to which job (the client
    fetches the result with the job's id)."""
    job = event.job
    error = None
    if job.error_code is not None:
        error = {"code": job.error_code, "message": job.error_message}
    body = {
        "id": event.id,
        "object": "event",
        "type": event.type,
        "created_at": int(event.created_at.timestamp()),
        "data": {"id": job.id, "status": job.status, "model": job.model, "error": error},
    }
    return json.dumps(body, separators=(",", ":"))


class Outbox:
    """The ``webhook_deliveries`` table: events recorded, leased, delivered or failed."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Callable[[], datetime],
        render_event: EventRenderer = event_json,
    ) -> None:
        self._db = database
        self._clock = clock
        self._render_event = render_event

    def record(self, session: AsyncSession, job: JobRecord, now: datetime) -> str | None:
        """Add the event of ``job``'s final status to ``session`` (the transaction that
        ends it), if it has a webhook; the event's id."""
        if job.webhook_url is None:
            return None
        event = JobEvent(new_id("evt_"), f"job.{job.status}", now, job)
        session.add(
            WebhookDelivery(
                id=event.id,
                job_id=job.id,
                account_id=job.account_id,
                url=job.webhook_url,
                event_type=event.type,
                payload=self._render_event(event),
                attempts=0,
                status="pending",
                next_attempt_at=now,
                created_at=now,
            )
        )
        return event.id

    async def pending(self, session: AsyncSession) -> int:
        """How many deliveries wait to be delivered."""
        query = select(func.count()).where(WebhookDelivery.status == "pending")
        return int(await session.scalar(query) or 0)

    async def claim(self, owner: str, *, limit: int, lease: timedelta) -> list[DeliveryRecord]:
        """Take up to ``limit`` (at most 100) due deliveries, oldest due first, under a
        lease of ``owner``; each claim counts as an attempt."""
        check_owner(owner)
        if limit <= 0:
            return []
        now = self._clock()
        expires = now + lease
        due = (
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(clamp(limit, MAX_CLAIM))
            .with_for_update(skip_locked=True)
        )
        # Due again only when the lease lapses: one index serves both claims.
        statement = (
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(due))
            .values(
                attempts=WebhookDelivery.attempts + 1,
                lease_owner=owner,
                lease_expires_at=expires,
                next_attempt_at=expires,
            )
            .returning(WebhookDelivery)
            .execution_options(synchronize_session=False)
        )
        async with self._db.session() as session, session.begin():
            claimed = [_delivery(row, expires) for row in (await session.scalars(statement))]
        return sorted(claimed, key=lambda delivery: (delivery.created_at, delivery.id))

    async def delivered(self, owner: str, delivery_id: str) -> bool:
        """Mark the delivery done, if ``owner`` still holds it."""
        return await self._release(
            owner, delivery_id, status="delivered", delivered_at=self._clock()
        )

    async def failed(
        self, owner: str, delivery_id: str, *, error: str, next_attempt_at: datetime | None
    ) -> bool:
        """Record a failed attempt, if ``owner`` still holds the delivery: due again at
        ``next_attempt_at``, or (None) given up as failed."""
        last_error = cut(error, ERROR_MESSAGE_SIZE)
        if next_attempt_at is None:
            return await self._release(owner, delivery_id, status="failed", last_error=last_error)
        return await self._release(
            owner, delivery_id, next_attempt_at=next_attempt_at, last_error=last_error
        )

    async def _release(self, owner: str, delivery_id: str, **values: object) -> bool:
        check_owner(owner)
        statement = (
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.lease_owner == owner,
            )
            .values(lease_owner=None, lease_expires_at=None, **values)
            .returning(WebhookDelivery.id)
            .execution_options(synchronize_session=False)
        )
        async with self._db.session() as session, session.begin():
            return await session.scalar(statement) is not None


def _delivery(row: WebhookDelivery, lease_expires_at: datetime) -> DeliveryRecord:
    return DeliveryRecord(
        id=row.id,
        job_id=row.job_id,
        account_id=row.account_id,
        url=row.url,
        event_type=row.event_type,
        payload=row.payload,
        attempts=row.attempts,
        created_at=row.created_at,
        lease_expires_at=lease_expires_at,
    )
