"""Channels: post a message (the channel is made by its first post), read a channel in
pages, wait for its next message, follow it live, and let accounts into a private one.

Content and metadata are user data stored on purpose (unlike prompts), kept up to the
channel's retention (a count and an age). A private channel is readable and writable
only by its owner and the accounts it added; to anyone else it does not exist (404),
so its name says nothing about who uses it.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.accounts.records import Principal
from infermesh.channels.notify import ChannelNotifier
from infermesh.errors import Conflict, InvalidRequest, NotFound, RateLimited
from infermesh.limits.store import Bucket, Draw, LimitStore
from infermesh.protocol.json_depth import structure_nests_deeper_than
from infermesh.store import (
    Account,
    Channel,
    ChannelMember,
    ChannelMessage,
    Database,
    utcnow,
)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A channel's name: 1 to 64 letters, digits, dots, dashes and underscores."""
_MESSAGE_ID = re.compile(r"msg_([0-9]{1,18})")
MAX_PAGE = 100
MAX_METADATA_DEPTH = 8
VISIBILITIES = ("public", "private")
HEARTBEAT = 15.0
"""Seconds a live stream stays silent before a keep-alive comment."""


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """The limits of channels (see the ``channel_*`` settings)."""

    max_content: int = 16_384
    max_metadata: int = 4096
    posts_per_minute: int = 120
    retention: int = 1000
    max_age: timedelta = timedelta(days=30)
    max_owned: int = 100
    max_wait: float = 30.0
    max_followers: int = 16


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message: ``author`` is the posting account's name (never its key)."""

    id: str
    channel: str
    author: str
    content: str
    metadata: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MessagePage:
    """Messages oldest first; ``has_more`` when newer ones follow the last."""

    channel: str
    messages: list[MessageRecord]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        return self.messages[-1].id if self.messages else None


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """A channel as its readers see it (members only for its owner)."""

    name: str
    visibility: str
    owner: str
    members: list[str] | None
    created_at: datetime


def channel_not_found(name: str) -> NotFound:
    return NotFound(
        f"No channel '{name}' that this key may read.", param="channel", code="channel_not_found"
    )


class ChannelService:
    """Posting, reading, waiting and membership, over the channel tables."""

    def __init__(
        self,
        db: Database,
        limits: LimitStore,
        notifier: ChannelNotifier,
        options: ChannelOptions,
        *,
        prefix: str = "infermesh",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._limits = limits
        self.notifier = notifier
        self.options = options
        self._prefix = prefix
        self._clock = clock
        self._following: dict[int, int] = {}

    # --- posting -----------------------------------------------------------------------

    async def post(
        self,
        who: Principal,
        channel: str,
        content: str,
        metadata: dict[str, Any] | None = None,
        *,
        visibility: str | None = None,
    ) -> MessageRecord:
        """Store a message on ``channel`` (made, with ``visibility``, if new)."""
        name = check_name(channel)
        self._check_message(content, metadata)
        if visibility is not None and visibility not in VISIBILITIES:
            raise InvalidRequest("'visibility' is public or private.", param="visibility")
        await self._admit_post(who.account_id)
        now = self._clock()
        try:
            row, message = await self._store(who, name, content, metadata, visibility, now)
        except IntegrityError:  # the channel was made by a post at the same moment
            row, message = await self._store(who, name, content, metadata, visibility, now)
        await self.notifier.posted(row.id)
        return MessageRecord(
            f"msg_{message.id}", row.name, who.account_name, content, metadata, now
        )

    async def _store(
        self,
        who: Principal,
        name: str,
        content: str,
        metadata: dict[str, Any] | None,
        visibility: str | None,
        now: datetime,
    ) -> tuple[Channel, ChannelMessage]:
        async with self._db.session() as session, session.begin():
            row = await session.scalar(select(Channel).where(Channel.name == name))
            if row is None:
                row = await self._create(session, who, name, visibility or "public", now)
            elif not await _may_use(session, row, who.account_id):
                raise channel_not_found(name)
            elif visibility is not None and visibility != row.visibility:
                raise Conflict(
                    f"Channel '{name}' exists and is {row.visibility}.",
                    param="visibility",
                    code="channel_exists",
                )
            message = ChannelMessage(
                channel_id=row.id,
                account_id=who.account_id,
                content=content,
                meta=metadata,
                created_at=now,
            )
            session.add(message)
            await session.flush()
            await self._prune(session, row.id, now)
        return row, message

    async def _create(
        self, session: AsyncSession, who: Principal, name: str, visibility: str, now: datetime
    ) -> Channel:
        owned = await session.scalar(
            select(func.count()).where(Channel.owner_account_id == who.account_id)
        )
        if (owned or 0) >= self.options.max_owned:
            raise RateLimited(
                f"This account already made {owned} channels, the most it may; post to "
                "one of them.",
                code="too_many_channels",
                retry_after=3600,
            )
        row = Channel(
            name=name, visibility=visibility, owner_account_id=who.account_id, created_at=now
        )
        session.add(row)
        await session.flush()
        return row

    async def _prune(self, session: AsyncSession, channel_id: int, now: datetime) -> None:
        """Drop what is past the channel's retention: beyond the newest ``retention``
        messages, or older than ``max_age``."""
        cutoff = await session.scalar(
            select(ChannelMessage.id)
            .where(ChannelMessage.channel_id == channel_id)
            .order_by(ChannelMessage.id.desc())
            .offset(self.options.retention)
            .limit(1)
        )
        old = ChannelMessage.created_at < now - self.options.max_age
        dropped = old if cutoff is None else or_(old, ChannelMessage.id <= cutoff)
        await session.execute(
            delete(ChannelMessage).where(ChannelMessage.channel_id == channel_id, dropped)
        )

    def _check_message(self, content: str, metadata: dict[str, Any] | None) -> None:
        options = self.options
        if not content:
            raise InvalidRequest("'content' must not be empty.", param="content")
        if len(content) > options.max_content:
            raise InvalidRequest(
                f"'content' has {len(content)} characters; at most {options.max_content}.",
                param="content",
                code="content_too_long",
            )
        if metadata is None:
            return
        if structure_nests_deeper_than(metadata, MAX_METADATA_DEPTH):
            raise InvalidRequest(
                f"'metadata' nests deeper than {MAX_METADATA_DEPTH} levels.", param="metadata"
            )
        size = len(orjson.dumps(metadata))
        if size > options.max_metadata:
            raise InvalidRequest(
                f"'metadata' is {size} bytes as JSON; at most {options.max_metadata}.",
                param="metadata",
                code="metadata_too_large",
            )

    async def _admit_post(self, account_id: int) -> None:
        """One post of the account's ``posts_per_minute`` (shared by every gateway that
        shares the limit store); :class:`RateLimited` when it is spent."""
        bucket = Bucket(
            f"{self._prefix}:channel-posts:{account_id}", self.options.posts_per_minute, 60.0
        )
        verdict = await self._limits.admit([Draw(bucket, 1)], [], slot="")
        if not verdict.admitted:
            raise RateLimited(
                f"This account may post {self.options.posts_per_minute} channel messages a "
                "minute; wait before posting again.",
                code="channel_rate_limited",
                retry_after=max(math.ceil(verdict.retry_after), 1),
            )

    # --- reading -----------------------------------------------------------------------

    async def read(
        self,
        who: Principal,
        channel: str,
        *,
        after: str | None = None,
        limit: int = 20,
        wait: float = 0.0,
    ) -> MessagePage:
        """Messages after ``after`` (from the oldest kept if None), oldest first; with
        ``wait``, if there are none yet, until one comes or ``wait`` seconds pass."""
        name = check_name(channel)
        after_id = parse_cursor(after)
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"'limit' is between 1 and {MAX_PAGE}.", param="limit")
        if not 0 <= wait <= self.options.max_wait:
            raise InvalidRequest(
                f"'wait' is between 0 and {self.options.max_wait:g} seconds.", param="wait"
            )
        channel_id = await self._visible(name, who.account_id)
        event = self.notifier.event(channel_id)
        page = await self._page(channel_id, name, after_id, limit)
        if page.messages or wait <= 0:
            return page
        with self._follower(who.account_id):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    return page
                await self.notifier.wait(channel_id, event, min(left, self.notifier.recheck))
                event = self.notifier.event(channel_id)
                page = await self._page(channel_id, name, after_id, limit)
                if page.messages:
                    return page

    async def follow(
        self, who: Principal, channel: str, *, after: str | None = None
    ) -> AsyncIterator[MessageRecord | None]:
        """The channel's messages after ``after`` as they come, forever; None after each
        ``HEARTBEAT`` seconds without one (for a keep-alive). Checks run at once."""
        name = check_name(channel)
        after_id = parse_cursor(after)
        channel_id = await self._visible(name, who.account_id)
        if after_id is None:  # from now on
            after_id = await self._newest(channel_id)
        return self._follow(who.account_id, channel_id, name, after_id)

    async def _follow(
        self, account_id: int, channel_id: int, name: str, after_id: int
    ) -> AsyncIterator[MessageRecord | None]:
        with self._follower(account_id):
            quiet = 0.0
            while True:
                event = self.notifier.event(channel_id)
                page = await self._page(channel_id, name, after_id, MAX_PAGE)
                for message in page.messages:
                    yield message
                if page.messages:
                    after_id, quiet = int(page.messages[-1].id[4:]), 0.0
                    continue
                step = min(self.notifier.recheck, HEARTBEAT - quiet)
                started = asyncio.get_running_loop().time()
                await self.notifier.wait(channel_id, event, step)
                quiet += asyncio.get_running_loop().time() - started
                if quiet >= HEARTBEAT:
                    quiet = 0.0
                    yield None

    def _follower(self, account_id: int) -> _Following:
        return _Following(self._following, account_id, self.options.max_followers)

    async def _visible(self, name: str, account_id: int) -> int:
        """The id of the channel ``name`` if the account may read it; else 404."""
        async with self._db.session(read_only=True) as session:
            row = await session.scalar(select(Channel).where(Channel.name == name))
            if row is None or not await _may_use(session, row, account_id):
                raise channel_not_found(name)
            return row.id

    async def _page(
        self, channel_id: int, name: str, after_id: int | None, limit: int
    ) -> MessagePage:
        query = (
            select(ChannelMessage, Account.name)
            .join(Account, Account.id == ChannelMessage.account_id)
            .where(ChannelMessage.channel_id == channel_id)
            .order_by(ChannelMessage.id)
            .limit(limit + 1)
        )
        if after_id is not None:
            query = query.where(ChannelMessage.id > after_id)
        async with self._db.session(read_only=True) as session:
            rows = (await session.execute(query)).all()
        messages = [
            MessageRecord(f"msg_{row.id}", name, author, row.content, row.meta, row.created_at)
            for row, author in rows[:limit]
        ]
        return MessagePage(name, messages, len(rows) > limit)

    async def _newest(self, channel_id: int) -> int:
        async with self._db.session(read_only=True) as session:
            newest = await session.scalar(
                select(func.max(ChannelMessage.id)).where(ChannelMessage.channel_id == channel_id)
            )
        return int(newest or 0)

    # --- membership --------------------------------------------------------------------

    async def describe(self, who: Principal, channel: str) -> ChannelRecord:
        """The channel (its members only for its owner)."""
        name = check_name(channel)
        async with self._db.session(read_only=True) as session:
            row = await session.scalar(select(Channel).where(Channel.name == name))
            if row is None or not await _may_use(session, row, who.account_id):
                raise channel_not_found(name)
            return await _record(session, row, who.account_id)

    async def set_member(
        self, who: Principal, channel: str, account: str, *, member: bool
    ) -> ChannelRecord:
        """Let ``account`` into the owner's private ``channel`` (or out of it)."""
        name = check_name(channel)
        async with self._db.session() as session, session.begin():
            row = await session.scalar(select(Channel).where(Channel.name == name))
            if row is None or not await _may_use(session, row, who.account_id):
                raise channel_not_found(name)
            if row.owner_account_id != who.account_id or row.visibility != "private":
                raise InvalidRequest(
                    "Only the owner of a private channel chooses its members.",
                    param="channel",
                    code="not_channel_owner",
                )
            target = await session.scalar(select(Account.id).where(Account.name == account))
            if target is None:
                raise NotFound(f"No account '{account}'.", param="account")
            current = await session.get(ChannelMember, (row.id, target))
            if member and current is None and target != row.owner_account_id:
                session.add(
                    ChannelMember(channel_id=row.id, account_id=target, added_at=self._clock())
                )
            elif not member and current is not None:
                await session.delete(current)
            await session.flush()
            return await _record(session, row, who.account_id)


class _Following:
    """Counts an account's open long-polls and streams on this gateway, at most
    ``limit`` (more is a 429)."""

    def __init__(self, counts: dict[int, int], account_id: int, limit: int) -> None:
        self._counts = counts
        self._account = account_id
        self._limit = limit

    def __enter__(self) -> None:
        held = self._counts.get(self._account, 0)
        if held >= self._limit:
            raise RateLimited(
                f"This key's account already waits on {held} channel reads on this gateway; "
                "close one first.",
                code="too_many_channel_followers",
                retry_after=1,
            )
        self._counts[self._account] = held + 1

    def __exit__(self, *_: object) -> None:
        left = self._counts[self._account] - 1
        if left:
            self._counts[self._account] = left
        else:
            del self._counts[self._account]


def check_name(name: str) -> str:
    """``name`` if it is a channel name; else 400."""
    if not NAME.fullmatch(name):
        raise InvalidRequest(
            "'channel' must be 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit.",
            param="channel",
            code="invalid_channel_name",
        )
    return name


def parse_cursor(after: str | None) -> int | None:
    """The message number of a cursor ``msg_N``; 400 for anything else."""
    if after is None:
        return None
    found = _MESSAGE_ID.fullmatch(after)
    if found is None:
        raise InvalidRequest(
            "'after' must be the id of a message (msg_...).", param="after", code="invalid_cursor"
        )
    return int(found.group(1))


async def _may_use(session: AsyncSession, row: Channel, account_id: int) -> bool:
    if row.visibility == "public" or row.owner_account_id == account_id:
        return True
    return await session.get(ChannelMember, (row.id, account_id)) is not None


async def _record(session: AsyncSession, row: Channel, account_id: int) -> ChannelRecord:
    owner = await session.scalar(select(Account.name).where(Account.id == row.owner_account_id))
    members = None
    if row.owner_account_id == account_id and row.visibility == "private":
        found = await session.scalars(
            select(Account.name)
            .join(ChannelMember, ChannelMember.account_id == Account.id)
            .where(ChannelMember.channel_id == row.id)
            .order_by(Account.name)
        )
        members = list(found.all())
    return ChannelRecord(row.name, row.visibility, owner or "", members, row.created_at)
