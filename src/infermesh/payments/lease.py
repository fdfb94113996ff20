"""One watcher among several gateways: a lease on a row of ``payment_watchers``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, update
from sqlalchemy.dialects import postgresql, sqlite

from infermesh.store import Database, PaymentWatcher, utcnow


class WatcherLease:
    """The lease ``name`` held by ``owner`` for ``duration`` at a time.

    :meth:`take` succeeds for the holder (renewing it) or for anyone once it lapsed, by
    one conditional UPDATE: of several gateways, one holds it at a time.
    """

    def __init__(
        self,
        db: Database,
        *,
        name: str,
        owner: str,
        duration: timedelta,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._name = name
        self.owner = owner
        self._duration = duration
        self._clock = clock

    async def take(self) -> bool:
        """Take or renew the lease; whether this owner holds it now."""
        now = self._clock()
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        async with self._db.session() as session, session.begin():
            await session.execute(
                insert(PaymentWatcher)
                .values(name=self._name, owner=None, lease_expires_at=now)
                .on_conflict_do_nothing()
            )
            taken = await session.execute(
                update(PaymentWatcher)
                .where(
                    PaymentWatcher.name == self._name,
                    or_(
                        PaymentWatcher.lease_expires_at <= now,
                        PaymentWatcher.owner == self.owner,
                    ),
                )
                .values(owner=self.owner, lease_expires_at=now + self._duration)
            )
        return cast(CursorResult[Any], taken).rowcount == 1

    async def release(self) -> None:
        """Give the lease up now (on shutdown), so another gateway takes over at once."""
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(PaymentWatcher)
                .where(PaymentWatcher.name == self._name, PaymentWatcher.owner == self.owner)
                .values(owner=None, lease_expires_at=self._clock())
            )
