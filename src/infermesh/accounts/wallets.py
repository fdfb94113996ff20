"""Wallet sign-in: a nonce to sign, then an EIP-4361 message signed by a wallet proves
the wallet and gets a new API key of the account bound to it (made on first sign-in)."""

from __future__ import annotations

import asyncio
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.accounts.records import CreatedKey
from infermesh.accounts.service import AccountService
from infermesh.accounts.siwe import (
    SignInRefused,
    SiweMessage,
    check_message,
    check_signer,
    parse_message,
    parse_signature,
    recover_signer,
)
from infermesh.errors import RateLimited
from infermesh.store import Account, Database, Wallet, WalletNonce, transaction_lock, utcnow

NONCE_LENGTH = 24
"""Letters and digits in a nonce (EIP-4361 asks for 8 at least): about 143 bits."""
KEY_NAME = "wallet sign-in"
_NONCE_ALPHABET = string.ascii_letters + string.digits
_NONCES_LOCK = "infermesh.wallets.nonces"


class NonceInvalid(SignInRefused):
    """The message's nonce was never handed out, was used already, or expired."""

    code = "nonce_invalid"


class WalletAccountTaken(SignInRefused):
    """The name of a wallet's account is held by an account not bound to it."""

    code = "wallet_account_conflict"


@dataclass(frozen=True, slots=True)
class WalletOptions:
    """What a message must name (``domain``, one of ``chain_ids``), how long a nonce
    lives, at most how many may be outstanding, and the tier of new accounts."""

    domain: str
    chain_ids: tuple[int, ...]
    nonce_ttl: timedelta = timedelta(minutes=5)
    max_nonces: int = 10_000
    tier: str = "free"


@dataclass(frozen=True, slots=True)
class IssuedNonce:
    """A nonce for one sign-in, usable until ``expires_at``."""

    nonce: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class WalletAccount:
    """A wallet proven by a signed message: its account (``created`` if this made it)
    and the wallet's checksummed address."""

    account: str
    address: str
    created: bool


@dataclass(frozen=True, slots=True)
class WalletSession:
    """A sign-in that worked: the account (``created`` if this sign-in made it), the
    wallet's checksummed address, and the new key (shown once)."""

    account: str
    address: str
    created: bool
    key: CreatedKey


def account_name(address: str) -> str:
    """The name of the account a wallet's first sign-in creates."""
    return f"wallet-{address.lower()}"


class WalletSignIn:
    """Hands out nonces and turns a signed EIP-4361 message into a new API key.

    A nonce is consumed by one conditional UPDATE, so of several sign-ins with one
    message exactly one gets a key. Binding an address to its account is serialized
    per address (an advisory lock on PostgreSQL; SQLite's write lock), so two first
    sign-ins of one wallet at once make one account and both get a key of it.
    """

    def __init__(
        self,
        db: Database,
        accounts: AccountService,
        options: WalletOptions,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._accounts = accounts
        self.options = options
        self._clock = clock

    async def issue_nonce(self) -> IssuedNonce:
        """A new nonce; expired ones are deleted first. :class:`RateLimited` when
        ``max_nonces`` unused ones are outstanding."""
        now = self._clock()
        issued = IssuedNonce(_new_nonce(), now + self.options.nonce_ttl)
        async with self._db.session() as session, session.begin():
            await transaction_lock(session, _NONCES_LOCK)
            await session.execute(delete(WalletNonce).where(WalletNonce.expires_at <= now))
            soonest = await self._full_until(session, now)
            if soonest is None:
                session.add(
                    WalletNonce(nonce=issued.nonce, created_at=now, expires_at=issued.expires_at)
                )
        if soonest is not None:
            raise RateLimited(
                "Too many wallet sign-ins are under way; try again shortly.",
                code="too_many_nonces",
                retry_after=max((soonest - now).total_seconds(), 1.0),
            )
        return issued

    async def sign_in(self, message: str, signature: str) -> WalletSession:
        """Check ``message`` (EIP-4361) and its ``signature``, consume its nonce, and give
        a new key of the wallet's account (made if this is its first sign-in).

        Every refusal is a :class:`SignInRefused` (401) with a code saying why. The
        nonce is consumed only by a message its wallet really signed."""
        entered = await self.enter(message, signature)
        key = await self._accounts.create_key(entered.account, name=KEY_NAME, create_account=False)
        return WalletSession(
            account=entered.account, address=entered.address, created=entered.created, key=key
        )

    async def enter(self, message: str, signature: str) -> WalletAccount:
        """Check ``message`` and its ``signature`` as :meth:`sign_in` does, consume its
        nonce, and find (or make) the wallet's account, without making a key (the
        dashboard opens a session of it)."""
        parsed = await self._checked(message, signature)
        name, created = await self._consume_and_bind(parsed.nonce, parsed.address.lower())
        return WalletAccount(account=name, address=parsed.address, created=created)

    async def prove(self, message: str, signature: str) -> str:
        """Check a signed EIP-4361 message as :meth:`sign_in` does and consume its nonce,
        without signing in: the wallet's address, lowercase (to bind it to the caller's
        account, as a payout wallet)."""
        parsed = await self._checked(message, signature)
        async with self._db.session() as session, session.begin():
            await self._consume(session, parsed.nonce, self._clock())
        return parsed.address.lower()

    async def _checked(self, message: str, signature: str) -> SiweMessage:
        """The parsed message, if it names what it must and its wallet signed it."""
        parsed = parse_message(message)
        options = self.options
        check_message(
            parsed,
            domain=options.domain,
            chain_ids=options.chain_ids,
            now=self._clock(),
            max_age=options.nonce_ttl,
        )
        raw_signature = parse_signature(signature)
        check_signer(parsed, await asyncio.to_thread(recover_signer, message, raw_signature))
        return parsed

    async def _consume(self, session: AsyncSession, nonce: str, now: datetime) -> None:
        """Mark ``nonce`` used, in the caller's transaction; :class:`NonceInvalid` if it
        is unknown, used or expired."""
        consumed = await session.execute(
            update(WalletNonce)
            .where(
                WalletNonce.nonce == nonce,
                WalletNonce.used_at.is_(None),
                WalletNonce.expires_at > now,
            )
            .values(used_at=now)
        )
        if cast(CursorResult[Any], consumed).rowcount != 1:
            raise NonceInvalid(
                "The message's nonce is unknown, used or expired; get a new one from "
                "GET /v1/auth/wallet/nonce and sign again.",
                param="message",
            )

    async def _full_until(self, session: AsyncSession, now: datetime) -> datetime | None:
        """When the soonest outstanding nonce expires, if there are ``max_nonces``."""
        outstanding = (WalletNonce.used_at.is_(None), WalletNonce.expires_at > now)
        count = await session.scalar(
            select(func.count()).select_from(WalletNonce).where(*outstanding)
        )
        if (count or 0) < self.options.max_nonces:
            return None
        soonest: datetime | None = await session.scalar(
            select(func.min(WalletNonce.expires_at)).where(*outstanding)
        )
        return soonest or now

    async def _consume_and_bind(self, nonce: str, address: str) -> tuple[str, bool]:
        """Consume ``nonce`` and find (or make) the account of ``address``, in one
        transaction: a refusal consumes nothing. The account's name, and whether it is new."""
        now = self._clock()
        async with self._db.session() as session, session.begin():
            await self._consume(session, nonce, now)
            await transaction_lock(session, f"infermesh.wallets.{address}")
            bound = await session.scalar(
                select(Account.name)
                .join(Wallet, Wallet.account_id == Account.id)
                .where(Wallet.address == address)
            )
            if bound is not None:
                return bound, False
            await self._bind_new_account(session, address, now)
        return account_name(address), True

    async def _bind_new_account(self, session: AsyncSession, address: str, now: datetime) -> None:
        name = account_name(address)
        account = Account(name=name, tier=self.options.tier, created_at=now)
        try:
            async with session.begin_nested():
                session.add(account)
        except IntegrityError:
            raise WalletAccountTaken(
                f"The account name '{name}' is taken by an account not bound to this "
                "wallet; an administrator must rename or remove it."
            ) from None
        session.add(Wallet(address=address, account_id=account.id, created_at=now))


def _new_nonce() -> str:
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(NONCE_LENGTH))
