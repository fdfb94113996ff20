"""The webhook sender of one gateway: POSTs the queue's pending job events.

Events are written in the transaction that ends their job (see :mod:`.outbox`), so
none is lost in a crash; each gateway takes due ones under a lease and sends each,
signed with its account's secret (Standard Webhooks). A receiver that does not answer
2xx is tried again with backoff, up to :data:`MAX_DELIVERY_ATTEMPTS` times; a target that
resolves to a refused address, or an account with no secret, is given up at once. A
delivery can arrive twice (at least once): receivers dedupe on ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx

from infermesh.jobs.queue import JobQueue
from infermesh.jobs.records import DeliveryRecord
from infermesh.jobs.webhook_secrets import WebhookSecrets
from infermesh.jobs.webhooks import (
    MAX_DELIVERY_ATTEMPTS,
    deliver,
    new_webhook_client,
    next_attempt_delay,
)
from infermesh.store import utcnow

logger = logging.getLogger(__name__)

BATCH = 16


@dataclass(frozen=True, slots=True)
class SenderOptions:
    allow_private: bool
    retry_base: float
    retry_cap: float
    poll_interval: float
    lease: timedelta = timedelta(seconds=60)
    time_limit: float = 10.0


class WebhookSender:
    """Sends due webhook deliveries, forever; see the module docstring."""

    def __init__(
        self, queue: JobQueue, secrets: WebhookSecrets, options: SenderOptions, *, owner: str
    ) -> None:
        self._queue = queue
        self._secrets = secrets
        self._options = options
        self._owner = owner
        self._wake = asyncio.Event()

    def nudge(self) -> None:
        """Look for due deliveries now (a job just ended)."""
        self._wake.set()

    async def run(self) -> None:
        async with new_webhook_client() as client:
            while True:
                try:
                    sent = await self.tick(client)
                except Exception:
                    logger.exception("sending webhooks failed; trying again")
                    sent = 0
                if sent:
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._options.poll_interval):
                        await self._wake.wait()

    async def tick(self, client: httpx.AsyncClient) -> int:
        """Send one batch of due deliveries; how many there were."""
        due = await self._queue.claim_deliveries(
            self._owner, limit=BATCH, lease=self._options.lease
        )
        await asyncio.gather(*(self._send(client, delivery) for delivery in due))
        return len(due)

    async def _send(self, client: httpx.AsyncClient, delivery: DeliveryRecord) -> None:
        secret = await self._secrets.get(delivery.account_id)
        if secret is None:
            await self._failed(delivery, "the account has no webhook secret", retry=False)
            return
        result = await deliver(
            client,
            delivery.url,
            secret=secret,
            event_id=delivery.id,
            body=delivery.payload.encode(),
            timestamp=int(time.time()),
            allow_private=self._options.allow_private,
            time_limit=self._options.time_limit,
        )
        if result.ok:
            await self._queue.delivered(self._owner, delivery.id)
        else:
            await self._failed(delivery, result.reason, retry=result.retryable)

    async def _failed(self, delivery: DeliveryRecord, reason: str, *, retry: bool) -> None:
        attempt = delivery.attempts
        if retry and attempt < MAX_DELIVERY_ATTEMPTS:
            delay = next_attempt_delay(
                max(attempt, 1), base=self._options.retry_base, cap=self._options.retry_cap
            )
            next_at = utcnow() + timedelta(seconds=delay)
            logger.info(
                "webhook %s failed (%s); attempt %d in %.1fs",
                delivery.id,
                reason,
                attempt + 1,
                delay,
            )
        else:
            next_at = None
            logger.warning(
                "webhook %s given up after %d attempts (%s)", delivery.id, attempt, reason
            )
        await self._queue.delivery_failed(
            self._owner, delivery.id, error=reason, next_attempt_at=next_at
        )
