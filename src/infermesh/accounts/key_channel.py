"""Key changes announced to every gateway at once, on a Redis pub/sub channel.

Pub/sub delivers a message at most once, to those subscribed when it is published.
So a listener reports each (re)subscription, and a gateway clears its key cache then:
what it misses while it is not subscribed is bounded by the cache's TTL instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from infermesh.accounts.key_cache import KeyChange

logger = logging.getLogger(__name__)

POLL_INTERVAL = 10.0
"""Seconds a listener waits for a message before it checks its connection (PING)."""
RETRY_INTERVAL = 1.0
"""Seconds between attempts to subscribe again after the connection failed."""


class KeyChannel:
    """Publishes :class:`KeyChange` messages on ``<prefix>:key-changes`` and listens to them."""

    def __init__(self, url: str, *, prefix: str, timeout: float = 2.0) -> None:
        self.name = f"{prefix}:key-changes"
        self._url = url
        self._timeout = timeout
        self._publisher = self._client()

    async def publish(self, change: KeyChange) -> bool:
        """Announce ``change``; False (and a warning) if Redis could not be reached, in
        which case other gateways see it within their cache's TTL."""
        try:
            await self._publisher.publish(self.name, change.wire())
        except (RedisError, OSError) as exc:
            logger.warning(
                "could not announce a key change on Redis (other gateways apply it within "
                "their key cache TTL): %s: %s",
                type(exc).__name__,
                exc,
            )
            return False
        return True

    async def listen(
        self, on_change: Callable[[KeyChange], None], on_subscribed: Callable[[], None]
    ) -> None:
        """Until cancelled: call ``on_change`` for each change announced, and
        ``on_subscribed`` each time the subscription starts (again)."""
        subscribed = True  # whether the last attempt got as far as subscribing

        def on_subscribed_again() -> None:
            nonlocal subscribed
            if not subscribed:
                logger.warning("subscribed again to the key-change channel on Redis")
            subscribed = True
            on_subscribed()

        while True:
            try:
                await self._listen_once(on_change, on_subscribed_again)
            except (RedisError, OSError) as exc:
                level = logging.WARNING if subscribed else logging.DEBUG
                logger.log(
                    level,
                    "lost the key-change channel on Redis (key changes made elsewhere apply "
                    "here within the key cache TTL until it is back): %s: %s",
                    type(exc).__name__,
                    exc,
                )
                subscribed = False
            except Exception:  # a bug must not end the listening for good
                logger.exception("the key-change listener failed; subscribing again")
                subscribed = False
            await asyncio.sleep(RETRY_INTERVAL)

    async def close(self) -> None:
        await self._publisher.aclose()

    async def _listen_once(
        self, on_change: Callable[[KeyChange], None], on_subscribed: Callable[[], None]
    ) -> None:
        # No silent reconnection: a reconnect would hide the messages lost meanwhile.
        client = self._client(retry=Retry(NoBackoff(), 0), health_check_interval=POLL_INTERVAL)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.name)
            while True:
                message = await pubsub.get_message(timeout=POLL_INTERVAL)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    on_subscribed()
                elif message["type"] == "message":
                    change = KeyChange.parse(str(message["data"]))
                    if change is not None:
                        on_change(change)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

    def _client(
        self, *, retry: Retry | None = None, health_check_interval: float = 0
    ) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            decode_responses=True,
            retry=retry,
            health_check_interval=health_check_interval,
        )
