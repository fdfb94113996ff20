"""``last_used_at`` of API keys: written at most once a minute per key, off the request path."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import Table, bindparam, or_, update

from infermesh.store import ApiKey, Database

logger = logging.getLogger(__name__)

LAST_USED_RESOLUTION = timedelta(minutes=1)
"""A key's ``last_used_at`` is written again only once it is this old."""

_api_keys: Table = ApiKey.__table__  # type: ignore[assignment]
_WRITE_USE = (
    update(_api_keys)
    .where(
        _api_keys.c.id == bindparam("key_id"),
        or_(
            _api_keys.c.last_used_at.is_(None),
            _api_keys.c.last_used_at <= bindparam("written_before"),
        ),
    )
    .values(last_used_at=bindparam("used_at"))
)


def due(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether a use at ``now`` is to be written, the last one written being ``last_used_at``."""
    return last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION


class KeyUses:
    """The uses of keys noted since they were last written, newest per key.

    :meth:`note` is what a request does (a dict assignment); :meth:`write` writes every
    noted use in one statement. A row whose ``last_used_at`` is less than a minute
    older than the use is left as it is, so several gateways write a key at most about
    once a minute between them.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def note(self, key_id: str, now: datetime) -> None:
        """Remember that ``key_id`` was used at ``now`` (written by the next :meth:`write`)."""
        self._pending[key_id] = now

    async def write(self) -> None:
        """Write the noted uses; on a database error they are kept for the next write."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            await self._write(pending)
        except Exception:
            self._pending = {**pending, **self._pending}
            raise

    async def touch(self, key_id: str, now: datetime) -> None:
        """Write one use now (for callers without a background writer)."""
        await self._write({key_id: now})

    async def _write(self, uses: dict[str, datetime]) -> None:
        rows = [
            {"key_id": key_id, "used_at": now, "written_before": now - LAST_USED_RESOLUTION}
            for key_id, now in uses.items()
        ]
        async with self._db.session() as session, session.begin():
            await session.execute(_WRITE_USE, rows)
