"""Dashboard sessions: who a signed-in browser is.

Signing in with an API key (or the admin key) opens a session: a random token goes to the
browser in a cookie, and only its SHA-256 is stored, with the account, the key it signed
in with, a CSRF token and an expiry. A session is looked up on each page (the dashboard
is not on the per-request path of the API); it ends when it expires, when its browser
signs out, or when the key it signed in with is revoked. Sessions are rows of the shared
database, so every gateway of a network knows them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from infermesh.accounts.records import Principal
from infermesh.store import Account, ApiKey, DashboardSession, Database, utcnow

SESSION_TOKEN_BYTES = 32
DEFAULT_SESSION_TTL = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A live session: its account (None for the admin's), how it signed in, and the
    CSRF token its forms carry."""

    account_id: int | None
    account_name: str | None
    tier: str | None
    key_id: str | None
    wallet: str | None
    admin: bool
    csrf: str
    expires_at: datetime

    @property
    def principal(self) -> Principal | None:
        """The session's caller, as the API's services take it (None for the admin)."""
        if self.account_id is None or self.account_name is None or self.tier is None:
            return None
        return Principal(self.key_id or "", self.account_id, self.account_name, self.tier)

    def csrf_matches(self, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (compared in constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


@dataclass(frozen=True, slots=True)
class OpenedSession:
    """A session just opened: the token for the cookie (never stored) and its record."""

    token: str
    record: SessionRecord


class DashboardSessions:
    """Opens, finds and ends dashboard sessions."""

    def __init__(
        self,
        database: Database,
        *,
        ttl: timedelta = DEFAULT_SESSION_TTL,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._database = database
        self.ttl = ttl
        self._clock = clock

    async def open_for_key(self, principal: Principal) -> OpenedSession:
        """A session of ``principal``'s account, signed in with its key."""
        return await self._open(account_id=principal.account_id, key_id=principal.key_id)

    async def open_for_wallet(self, account_id: int, wallet: str) -> OpenedSession:
        """A session of the account that signed in with ``wallet``."""
        return await self._open(account_id=account_id, wallet=wallet.lower())

    async def open_for_admin(self) -> OpenedSession:
        """A session of the admin (signed in with the admin key)."""
        return await self._open(admin=True)

    async def find(self, token: str | None) -> SessionRecord | None:
        """The live session of ``token``; None if there is none, it expired, or the key
        it signed in with was revoked."""
        if not token or len(token) > 128:
            return None
        now = self._clock()
        async with self._database.session(read_only=True) as session:
            query = (
                select(DashboardSession, Account, ApiKey.revoked_at)
                .outerjoin(Account, Account.id == DashboardSession.account_id)
                .outerjoin(ApiKey, ApiKey.id == DashboardSession.key_id)
                .where(DashboardSession.token_hash == _hash(token))
            )
            row = (await session.execute(query)).first()
        if row is None:
            return None
        stored, account, key_revoked_at = row
        if stored.expires_at <= now or key_revoked_at is not None:
            return None
        if stored.account_id is not None and account is None:
            return None
        return SessionRecord(
            account_id=stored.account_id,
            account_name=account.name if account is not None else None,
            tier=account.tier if account is not None else None,
            key_id=stored.key_id,
            wallet=stored.wallet,
            admin=stored.admin,
            csrf=stored.csrf,
            expires_at=stored.expires_at,
        )

    async def end(self, token: str | None) -> None:
        """End the session of ``token`` (signing out); nothing if there is none."""
        if not token or len(token) > 128:
            return
        async with self._database.session() as session, session.begin():
            await session.execute(
                delete(DashboardSession).where(DashboardSession.token_hash == _hash(token))
            )

    async def purge_expired(self) -> int:
        """Delete the sessions that have expired; how many."""
        async with self._database.session() as session, session.begin():
            result = await session.execute(
                delete(DashboardSession).where(DashboardSession.expires_at <= self._clock())
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def _open(
        self,
        *,
        account_id: int | None = None,
        key_id: str | None = None,
        wallet: str | None = None,
        admin: bool = False,
    ) -> OpenedSession:
        token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
        now = self._clock()
        row = DashboardSession(
            token_hash=_hash(token),
            account_id=account_id,
            key_id=key_id,
            wallet=wallet,
            admin=admin,
            csrf=secrets.token_urlsafe(SESSION_TOKEN_BYTES),
            created_at=now,
            expires_at=now + self.ttl,
        )
        async with self._database.session() as session, session.begin():
            session.add(row)
        record = await self.find(token)
        assert record is not None
        return OpenedSession(token, record)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
