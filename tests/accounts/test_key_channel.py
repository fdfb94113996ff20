"""The key-change channel on a real Redis: delivery, and a new subscription after Redis
comes back (the gateway clears its cache then, as changes may have been missed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from infermesh.accounts.key_cache import KeyChange
from infermesh.accounts.key_channel import KeyChannel
from tests.support.redis import private_redis, redis_url, require_redis, unique_prefix


class Heard:
    """What a listener heard: changes and subscriptions, each signalled as it comes."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[KeyChange] = asyncio.Queue()
        self.subscriptions: asyncio.Queue[None] = asyncio.Queue()

    def change(self, change: KeyChange) -> None:
        self.changes.put_nowait(change)

    def subscribed(self) -> None:
        self.subscriptions.put_nowait(None)


@asynccontextmanager
async def listening(channel: KeyChannel) -> AsyncIterator[Heard]:
    heard = Heard()
    task = asyncio.create_task(channel.listen(heard.change, heard.subscribed))
    try:
        yield heard
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.close()


async def test_changes_reach_every_listener() -> None:
    require_redis()
    prefix = unique_prefix()
    publisher = KeyChannel(redis_url(), prefix=prefix)
    async with (
        listening(KeyChannel(redis_url(), prefix=prefix)) as first,
        listening(KeyChannel(redis_url(), prefix=prefix)) as second,
    ):
        for heard in (first, second):
            await asyncio.wait_for(heard.subscriptions.get(), timeout=10)
        changes = [KeyChange("key", "key_1"), KeyChange("account", "3"), KeyChange("created")]
        for change in changes:
            assert await publisher.publish(change)
        for heard in (first, second):
            got = [await asyncio.wait_for(heard.changes.get(), timeout=10) for _ in changes]
            assert got == changes
    await publisher.close()


async def test_a_listener_subscribes_again_when_redis_comes_back() -> None:
    with private_redis() as server:
        prefix = unique_prefix()
        channel = KeyChannel(server.url, prefix=prefix, timeout=1.0)
        publisher = KeyChannel(server.url, prefix=prefix, timeout=1.0)
        async with listening(channel) as heard:
            await asyncio.wait_for(heard.subscriptions.get(), timeout=10)
            server.stop()
            assert not await publisher.publish(KeyChange("key", "key_lost"))  # lost
            server.start()
            await asyncio.wait_for(heard.subscriptions.get(), timeout=30)
            assert await publisher.publish(KeyChange("key", "key_2"))
            change = await asyncio.wait_for(heard.changes.get(), timeout=10)
            assert change == KeyChange("key", "key_2")
        await publisher.close()
