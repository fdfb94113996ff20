"""Each account's webhook signing secret: made (or replaced) on request and shown then
only; read by the gateway that signs the account's events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from infermesh.jobs.webhooks import new_webhook_secret
from infermesh.store import Database, WebhookSecret, utcnow


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """That an account has a secret, and since when (the secret itself is not here)."""

    account_id: int
    created_at: datetime


class WebhookSecrets:
    """The ``webhook_secrets`` table."""

    def __init__(self, database: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = database
        self._clock = clock

    async def rotate(self, account_id: int) -> tuple[str, SecretInfo]:
        """A new secret for the account, replacing its old one (events signed from now
        on use it); the secret is returned here and never again."""
        secret, now = new_webhook_secret(), self._clock()
        for _ in range(2):  # two first rotations at once: one inserts, the other updates
            try:
                async with self._db.session() as session, session.begin():
                    row = await session.get(WebhookSecret, account_id, with_for_update=True)
                    if row is None:
                        session.add(
                            WebhookSecret(account_id=account_id, secret=secret, created_at=now)
                        )
                    else:
                        row.secret, row.created_at = secret, now
                return secret, SecretInfo(account_id, now)
            except IntegrityError:
                continue
        raise RuntimeError("could not store the webhook secret")

    async def get(self, account_id: int) -> str | None:
        """The account's secret, for signing (None: it has none)."""
        async with self._db.session(read_only=True) as session:
            row = await session.get(WebhookSecret, account_id)
        return None if row is None else row.secret

    async def info(self, account_id: int) -> SecretInfo | None:
        async with self._db.session(read_only=True) as session:
            row = await session.get(WebhookSecret, account_id)
        return None if row is None else SecretInfo(account_id, row.created_at)
