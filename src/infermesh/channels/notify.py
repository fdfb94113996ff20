"""Waking the readers that wait for a channel's next message.

A post wakes the waiters of its channel on this gateway at once. With Redis configured
it is also published there, and every gateway's subscriber wakes its own waiters, so a
long-poll on one gateway returns as soon as another gateway stores a message. Waiters
look at the database again now and then anyway (``recheck``), so a lost notice (Redis
away for a moment, no Redis but a shared PostgreSQL) only delays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from infermesh.backoff import equal_jitter

logger = logging.getLogger(__name__)


class ChannelNotifier:
    """Per channel, an event its waiters wait on; replaced each time it is set."""

    def __init__(self, *, recheck: float) -> None:
        self.recheck = recheck
        self._events: dict[int, asyncio.Event] = {}
        self._waiters: dict[int, int] = {}

    def event(self, channel_id: int) -> asyncio.Event:
        """The event the next message on the channel sets; take it *before* looking
        for messages, so that one stored in between is not missed."""
        found = self._events.get(channel_id)
        if found is None:
            found = self._events[channel_id] = asyncio.Event()
        return found

    async def wait(self, channel_id: int, event: asyncio.Event, seconds: float) -> None:
        """Wait until ``event`` is set or ``seconds`` pass."""
        self._waiters[channel_id] = self._waiters.get(channel_id, 0) + 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
        finally:
            left = self._waiters[channel_id] - 1
            if left:
                self._waiters[channel_id] = left
            else:  # nobody waits: forget the channel (an unset event is not needed)
                del self._waiters[channel_id]
                if self._events.get(channel_id) is event and not event.is_set():
                    del self._events[channel_id]

    def wake(self, channel_id: int) -> None:
        """A message was stored on the channel: wake its waiters on this gateway."""
        found = self._events.pop(channel_id, None)
        if found is not None:
            found.set()

    async def posted(self, channel_id: int) -> None:
        """A message was stored here: wake the waiters here (and elsewhere, in
        :class:`RedisChannelNotifier`)."""
        self.wake(channel_id)

    async def run(self) -> None:
        """Receive other gateways' notices (nothing to do without Redis)."""
        return

    async def close(self) -> None:
        return


class RedisChannelNotifier(ChannelNotifier):
    """:class:`ChannelNotifier` whose notices also go through a Redis channel, shared
    by every gateway with the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str, recheck: float, timeout: float = 2.0) -> None:
        super().__init__(recheck=recheck)
        self._topic = f"{prefix}:channels"
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._listener = aioredis.Redis.from_url(url, socket_connect_timeout=timeout)
        self._rng = random.Random()
        self.heard = 0
        """Notices received from Redis (tests and metrics read it)."""

    async def posted(self, channel_id: int) -> None:
        self.wake(channel_id)
        try:
            await self._redis.publish(self._topic, str(channel_id))
        except (RedisError, OSError) as exc:  # readers elsewhere find it on their recheck
            logger.warning("publishing a channel notice failed: %s", type(exc).__name__)

    async def run(self) -> None:
        """Subscribe and wake local waiters for every notice, reconnecting forever."""
        failures = 0
        while True:
            try:
                async with self._listener.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._topic)
                    failures = 0
                    async for message in pubsub.listen():
                        self._received(message.get("data"))
            except (RedisError, OSError) as exc:
                failures += 1
                delay = equal_jitter(failures, base=0.5, cap=10.0, rng=self._rng)
                logger.warning(
                    "channel notices from Redis stopped (%s); again in %.1fs",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)

    def _received(self, data: object) -> None:
        """A notice from Redis: the id of a channel, bounded (anyone with access to
        Redis could publish here)."""
        if isinstance(data, bytes) and 0 < len(data) <= 12 and data.isdigit():
            self.heard += 1
            self.wake(int(data))

    async def close(self) -> None:
        for client in (self._redis, self._listener):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
