"""The account service: accounts, their API keys, and authenticating a key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from infermesh.accounts.key_cache import CachedKey, KeyCache, KeyChange
from infermesh.accounts.key_uses import KeyUses, due
from infermesh.accounts.keys import (
    display_prefix,
    generate_key,
    generate_key_id,
    hash_key,
    is_well_formed,
)
from infermesh.accounts.records import (
    AccountExists,
    AccountRecord,
    AccountSummary,
    CreatedKey,
    KeyRecord,
    KeyRevoked,
    Principal,
)
from infermesh.errors import InvalidRequest, NotFound
from infermesh.store import Account, ApiKey, Database, transaction_lock, utcnow

if TYPE_CHECKING:
    from infermesh.accounts.key_channel import KeyChannel

logger = logging.getLogger(__name__)

USES_WRITE_INTERVAL = 15.0
"""Seconds between two writes of the keys' ``last_used_at`` by a gateway."""
BOOTSTRAP_KEY_NAME = "bootstrap"
_MAX_NAME_LENGTH = 200
_MAX_TIER_LENGTH = 32
MAX_ACCOUNTS_PAGE = 200


class AccountService:
    """Creates accounts and keys, lists, renames, revokes and rotates keys, authenticates
    them.

    ``clock`` gives the current UTC time (tests pass their own).

    With a ``key_cache`` (a gateway), :meth:`authenticate` answers from memory and only
    notes uses; :meth:`keep_keys_fresh` writes them in the background. Every change
    this service makes to a key or an account is applied to its cache before the call
    returns, and announced on ``channel`` (Redis) if there is one, for the other
    gateways; see :mod:`infermesh.accounts.key_cache` for how stale an answer can be.
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        key_cache: KeyCache | None = None,
        channel: KeyChannel | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self.key_cache = key_cache
        self._channel = channel
        self._uses = KeyUses(db)

    async def create_account(self, name: str, *, tier: str = "free") -> AccountRecord:
        """Create the account ``name``; raises :class:`AccountExists` if it is taken."""
        _check_account(name, tier)
        account = Account(name=name, tier=tier, created_at=self._clock())
        try:
            async with self._db.session() as session, session.begin():
                session.add(account)
        except IntegrityError as exc:
            raise AccountExists(f"An account named '{name}' already exists.", param="name") from exc
        return _account_record(account)

    async def create_key(
        self,
        account: str,
        *,
        name: str | None = None,
        create_account: bool = True,
        tier: str = "free",
    ) -> CreatedKey:
        """A new key for the account named ``account``; the raw key is in the result only.

        A missing account is created (with ``tier``) when ``create_account`` is true,
        else it is :class:`NotFound`. ``tier`` does not change an existing account.
        """
        _check_key_name(name)
        async with self._db.session() as session, session.begin():
            owner = await find_account(session, account)
            if owner is None:
                if not create_account:
                    raise NotFound(f"No account named '{account}'.", param="account")
                owner = await add_account(session, account, tier=tier, created_at=self._clock())
            await check_room(session, ApiKey, ApiKey.account_id == owner.id, "API keys")
            created = await self._add_key(session, owner, name)
        await self._announce(KeyChange("created"))
        return created

    async def get_account(self, name: str) -> AccountRecord:
        """The account ``name``; :class:`NotFound` if there is none."""
        async with self._db.session(read_only=True) as session:
            account = await find_account(session, name)
        if account is None:
            raise NotFound(f"No account named '{name}'.", param="account")
        return _account_record(account)

    async def get_account_by_id(self, account_id: int) -> AccountRecord:
        """The account with id ``account_id``; :class:`NotFound` if there is none."""
        async with self._db.session(read_only=True) as session:
            account = await session.get(Account, account_id)
        if account is None:
            raise NotFound(f"No account with id {account_id}.", param="account")
        return _account_record(account)

    async def list_accounts(
        self, *, search: str | None = None, limit: int = 50, after: str | None = None
    ) -> tuple[list[AccountSummary], bool]:
        """Accounts by name (those whose name contains ``search``, in any case), with
        their key counts, ``limit`` at a time; and whether more exist. ``after`` is the
        last name of the previous page."""
        if not 1 <= limit <= MAX_ACCOUNTS_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_ACCOUNTS_PAGE}.", param="limit")
        revoked = case((ApiKey.revoked_at.is_not(None), 1), else_=0)
        query = (
            select(Account, func.count(ApiKey.id), func.coalesce(func.sum(revoked), 0))
            .outerjoin(ApiKey, ApiKey.account_id == Account.id)
            .group_by(Account.id)
            .order_by(Account.name)
            .limit(limit + 1)
        )
        if search:
            query = query.where(Account.name.icontains(search, autoescape=True))
        if after is not None:
            query = query.where(Account.name > after)
        async with self._db.session(read_only=True) as session:
            rows = (await session.execute(query)).all()
        summaries = [
            AccountSummary(_account_record(account), int(keys) - int(gone), int(gone))
            for account, keys, gone in rows[:limit]
        ]
        return summaries, len(rows) > limit

    async def set_tier(self, name: str, tier: str) -> AccountRecord:
        """Move the account ``name`` to ``tier`` (which model tiers it may use)."""
        _check_account(name, tier)
        async with self._db.session() as session, session.begin():
            account = await find_account(session, name)
            if account is None:
                raise NotFound(f"No account named '{name}'.", param="account")
            account.tier = tier
        await self._announce(KeyChange("account", str(account.id)))
        return _account_record(account)

    async def list_keys(self, account: str | None = None) -> list[KeyRecord]:
        """Every key (revoked ones too), oldest first; only ``account``'s if given."""
        query = _keys_query().order_by(ApiKey.created_at, ApiKey.id)
        if account is not None:
            query = query.where(Account.name == account)
        async with self._db.session(read_only=True) as session:
            rows = (await session.execute(query)).all()
        return [_key_record(key, owner) for key, owner in rows]

    async def get_key(self, key_id: str) -> KeyRecord:
        """The key ``key_id``; :class:`NotFound` if there is none."""
        async with self._db.session(read_only=True) as session:
            key, owner = await _key_or_not_found(session, key_id, lock=False)
        return _key_record(key, owner)

    async def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke ``key_id`` (revoking a revoked key changes nothing)."""
        async with self._db.session() as session, session.begin():
            key, owner = await _key_or_not_found(session, key_id, lock=True)
            if key.revoked_at is None:
                key.revoked_at = self._clock()
        await self._announce(KeyChange("key", key.id))
        return _key_record(key, owner)

    async def rename_key(self, key_id: str, name: str | None) -> KeyRecord:
        """Give ``key_id`` the label ``name`` (None: no label); revoked keys too."""
        _check_key_name(name)
        async with self._db.session() as session, session.begin():
            key, owner = await _key_or_not_found(session, key_id, lock=True)
            key.name = name
        return _key_record(key, owner)

    async def rotate_key(self, key_id: str) -> CreatedKey:
        """Replace ``key_id`` by a new key of the same account and name, in one transaction.

        The old key is revoked; a revoked key can't be rotated (:class:`KeyRevoked`).
        """
        async with self._db.session() as session, session.begin():
            key, owner = await _key_or_not_found(session, key_id, lock=True)
            if key.revoked_at is not None:
                raise KeyRevoked(f"API key '{key_id}' is revoked.", param="key_id")
            key.revoked_at = self._clock()
            created = await self._add_key(session, owner, key.name)
        await self._announce(KeyChange("key", key_id), KeyChange("created"))
        return created

    async def authenticate(self, raw_key: str) -> Principal | None:
        """Who holds ``raw_key``; None if it is malformed, unknown or revoked.

        Without a key cache: one indexed lookup by hash, and ``last_used_at`` written at
        most once a minute. With one: no database call while the answer is cached, and
        the use is only noted (written by :meth:`keep_keys_fresh`).
        """
        if not is_well_formed(raw_key):
            return None
        key_hash = hash_key(raw_key)
        cache = self.key_cache
        if cache is None:
            return await self._authenticate_uncached(key_hash)
        entry = cache.known(key_hash)
        if entry is None:
            if cache.unknown(key_hash):
                return None
            epoch, started = cache.epoch, cache.now()
            entry = await self._lookup(key_hash)
            cache.put(key_hash, entry, epoch=epoch, started=started)
            if entry is None:
                return None
        now = self._clock()
        if due(entry.last_used_at, now):
            entry.last_used_at = now
            self._uses.note(entry.principal.key_id, now)
        return entry.principal

    async def keep_keys_fresh(self, *, write_every: float = USES_WRITE_INTERVAL) -> None:
        """Until cancelled: apply the key changes announced on the channel to the cache
        (clearing it whenever the subscription starts again), and write the noted key
        uses every ``write_every`` seconds. When cancelled, writes them once more and
        closes the channel."""
        listening: asyncio.Task[None] | None = None
        if self._channel is not None and self.key_cache is not None:
            cache = self.key_cache
            listening = asyncio.create_task(self._channel.listen(cache.apply, cache.clear))
        try:
            while True:
                await asyncio.sleep(write_every)
                await self._write_uses()
        finally:
            if listening is not None:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening
            await self._write_uses()
            await self.close()

    async def write_uses(self) -> None:
        """Write the key uses noted since the last write (one statement)."""
        await self._uses.write()

    async def close(self) -> None:
        """Close the channel, if there is one."""
        if self._channel is not None:
            await self._channel.close()

    async def bootstrap(self, account: str = "default") -> CreatedKey | None:
        """On a database without accounts, create ``account`` and a key, and return it.

        Returns None when any account exists. Concurrent callers are serialized; at
        most one of them gets a key.
        """
        try:
            async with self._db.session() as session, session.begin():
                await transaction_lock(session, "infermesh.accounts.bootstrap")
                if await session.scalar(select(Account.id).limit(1)) is not None:
                    return None
                owner = await add_account(session, account, tier="free", created_at=self._clock())
                created = await self._add_key(session, owner, BOOTSTRAP_KEY_NAME)
        except IntegrityError:  # another process created the same account meanwhile
            return None
        await self._announce(KeyChange("created"))
        return created

    async def _add_key(self, session: AsyncSession, owner: Account, name: str | None) -> CreatedKey:
        raw_key = generate_key()
        key = ApiKey(
            id=generate_key_id(),
            account_id=owner.id,
            name=name,
            prefix=display_prefix(raw_key),
            key_hash=hash_key(raw_key),
            created_at=self._clock(),
        )
        session.add(key)
        await session.flush()
        return CreatedKey(key=raw_key, record=_key_record(key, owner))

    async def _lookup(self, key_hash: str) -> CachedKey | None:
        """The valid key stored under ``key_hash`` (one indexed query)."""
        query = (
            select(ApiKey.id, ApiKey.account_id, Account.name, Account.tier, ApiKey.last_used_at)
            .join(Account, ApiKey.account_id == Account.id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )
        async with self._db.session(read_only=True) as session:
            row = (await session.execute(query)).one_or_none()
        if row is None:
            return None
        key_id, account_id, account_name, tier, last_used_at = row
        principal = Principal(
            key_id=key_id, account_id=account_id, account_name=account_name, tier=tier
        )
        return CachedKey(principal, expires_at=0.0, last_used_at=last_used_at)

    async def _authenticate_uncached(self, key_hash: str) -> Principal | None:
        entry = await self._lookup(key_hash)
        if entry is None:
            return None
        now = self._clock()
        if due(entry.last_used_at, now):
            await self._uses.touch(entry.principal.key_id, now)
        return entry.principal

    async def _write_uses(self) -> None:
        try:
            await self._uses.write()
        except Exception:
            logger.exception("writing when API keys were last used failed; will try again")

    async def _announce(self, *changes: KeyChange) -> None:
        """Apply ``changes`` to this gateway's cache, then tell the other gateways."""
        for change in changes:
            if self.key_cache is not None:
                self.key_cache.apply(change)
            if self._channel is not None:
                await self._channel.publish(change)


async def find_account(session: AsyncSession, name: str) -> Account | None:
    """The account named ``name``, if there is one."""
    found: Account | None = await session.scalar(select(Account).where(Account.name == name))
    return found


async def add_account(
    session: AsyncSession, name: str, *, tier: str, created_at: datetime
) -> Account:
    """Insert the account ``name``, or take the one a concurrent transaction inserted."""
    _check_account(name, tier)
    account = Account(name=name, tier=tier, created_at=created_at)
    try:
        async with session.begin_nested():
            session.add(account)
    except IntegrityError:
        existing = await find_account(session, name)
        if existing is None:
            raise
        return existing
    return account


def _keys_query() -> Select[ApiKey, Account]:
    return select(ApiKey, Account).join(Account, ApiKey.account_id == Account.id)


async def _key_or_not_found(
    session: AsyncSession, key_id: str, *, lock: bool
) -> tuple[ApiKey, Account]:
    query = _keys_query().where(ApiKey.id == key_id)
    if lock:
        query = query.with_for_update(of=ApiKey)
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
    return row


def _check_account(name: str, tier: str) -> None:
    if not name.strip() or len(name) > _MAX_NAME_LENGTH:
        raise InvalidRequest(
            f"An account name must have 1 to {_MAX_NAME_LENGTH} characters.", param="name"
        )
    if not tier.strip() or len(tier) > _MAX_TIER_LENGTH:
        raise InvalidRequest(f"A tier must have 1 to {_MAX_TIER_LENGTH} characters.", param="tier")


def _check_key_name(name: str | None) -> None:
    if name is not None and len(name) > _MAX_NAME_LENGTH:
        raise InvalidRequest(
            f"A key name must have at most {_MAX_NAME_LENGTH} characters.", param="name"
        )


def _account_record(account: Account) -> AccountRecord:
    return AccountRecord(
        id=account.id, name=account.name, tier=account.tier, created_at=account.created_at
    )


def _key_record(key: ApiKey, owner: Account) -> KeyRecord:
    return KeyRecord(
        id=key.id,
        account_id=owner.id,
        account=owner.name,
        name=key.name,
        prefix=key.prefix,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
    )


MAX_LIVE_PER_ACCOUNT = 200
"""Unrevoked API keys (and worker tokens) one account may hold: enough for any real use,
and a bound on what a signed-in browser can make the database store."""


async def check_room(
    session: AsyncSession, table: Any, owned: ColumnElement[bool], what: str
) -> None:
    """Refuse a new row of ``table`` when its owner already holds the most live ones."""
    query = select(func.count()).select_from(table).where(owned, table.revoked_at.is_(None))
    live = await session.scalar(query) or 0
    if live >= MAX_LIVE_PER_ACCOUNT:
        raise InvalidRequest(
            f"The account already holds {live} {what}, the most it may hold at once: "
            "revoke some first.",
            code="too_many_live_credentials",
        )
