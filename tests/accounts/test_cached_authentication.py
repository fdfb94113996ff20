"""Authenticating with a key cache (as a gateway does): no database round trip per
request, and every change made through the service applies at once."""

from __future__ import annotations

import asyncio

from infermesh.accounts import AccountService
from infermesh.accounts.key_cache import KeyCache
from infermesh.store import Database
from tests.accounts.conftest import Seconds, Statements
from tests.support.clock import Clock


def cached(database: Database) -> AccountService:
    return AccountService(database, key_cache=KeyCache(ttl=60))


async def test_a_known_key_is_looked_up_once(database: Database, statements: Statements) -> None:
    service = cached(database)
    created = await service.create_key("alice", tier="pro")
    statements.sent.clear()
    principals = [await service.authenticate(created.key) for _ in range(100)]
    assert {p.key_id if p else None for p in principals} == {created.record.id}
    assert statements.on("api_keys", "SELECT") == 1
    assert statements.on("api_keys", "UPDATE") == 0  # uses are written in the background


async def test_a_repeated_wrong_key_is_looked_up_once(
    database: Database, statements: Statements
) -> None:
    service = cached(database)
    created = await service.create_key("alice")
    wrong = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")
    statements.sent.clear()
    assert [await service.authenticate(wrong) for _ in range(50)] == [None] * 50
    assert statements.on("api_keys", "SELECT") == 1


async def test_a_revoked_key_is_refused_at_once(database: Database) -> None:
    service = cached(database)
    created = await service.create_key("bob")
    assert await service.authenticate(created.key) is not None
    await service.revoke_key(created.record.id)
    assert await service.authenticate(created.key) is None


async def test_a_rotated_key_is_refused_and_its_successor_works_at_once(
    database: Database,
) -> None:
    service = cached(database)
    old = await service.create_key("carol")
    assert await service.authenticate(old.key) is not None
    new = await service.rotate_key(old.record.id)
    assert await service.authenticate(old.key) is None
    principal = await service.authenticate(new.key)
    assert principal is not None and principal.key_id == new.record.id


async def test_a_tier_change_applies_at_once(database: Database) -> None:
    service = cached(database)
    created = await service.create_key("dave", tier="free")
    first = await service.authenticate(created.key)
    assert first is not None and first.tier == "free"
    await service.set_tier("dave", "pro")
    again = await service.authenticate(created.key)
    assert again is not None and again.tier == "pro"


async def test_a_new_key_works_at_once(database: Database) -> None:
    service = cached(database)
    await service.create_key("erin")
    created = await service.create_key("erin")
    assert await service.authenticate(created.key) is not None


async def test_a_change_made_elsewhere_applies_within_the_ttl(database: Database) -> None:
    """Another process (here: a service with a connection pool of its own) writes to the
    database and announces nothing: this cache serves the old answer for at most ``ttl``."""
    seconds = Seconds()
    here = AccountService(database, key_cache=KeyCache(ttl=5, clock=seconds))
    elsewhere_db = Database(database.url)
    try:
        elsewhere = AccountService(elsewhere_db)
        created = await elsewhere.create_key("frank", tier="free")
        assert await here.authenticate(created.key) is not None
        await elsewhere.revoke_key(created.record.id)
        seconds.now += 4.9
        assert await here.authenticate(created.key) is not None  # still within the TTL
        seconds.now += 0.1
        assert await here.authenticate(created.key) is None
    finally:
        await elsewhere_db.dispose()


async def test_uses_are_written_in_the_background_at_most_once_a_minute(
    database: Database, statements: Statements
) -> None:
    clock = Clock()
    service = AccountService(database, clock=clock, key_cache=KeyCache(ttl=3600))
    created = await service.create_key("gina")
    key_id = created.record.id
    await service.authenticate(created.key)
    first_use = clock.now
    assert (await service.get_key(key_id)).last_used_at is None  # not on the request path
    await service.write_uses()
    assert (await service.get_key(key_id)).last_used_at == first_use
    clock.advance(30)
    await service.authenticate(created.key)
    statements.sent.clear()
    await service.write_uses()
    assert statements.on("api_keys", "UPDATE") == 0  # nothing due: used less than 1 min ago
    assert (await service.get_key(key_id)).last_used_at == first_use
    clock.advance(31)
    for _ in range(10):
        await service.authenticate(created.key)
    await service.write_uses()
    assert statements.on("api_keys", "UPDATE") == 1
    assert (await service.get_key(key_id)).last_used_at == clock.now


async def test_uses_of_many_keys_are_written_in_one_statement(
    database: Database, statements: Statements
) -> None:
    clock = Clock()
    service = AccountService(database, clock=clock, key_cache=KeyCache(ttl=3600))
    keys = [await service.create_key("hank") for _ in range(5)]
    for created in keys:
        await service.authenticate(created.key)
    statements.sent.clear()
    await service.write_uses()
    assert statements.on("api_keys", "UPDATE") == 1
    listed = await service.list_keys("hank")
    assert {record.last_used_at for record in listed} == {clock.now}


async def test_the_last_uses_are_written_when_the_service_stops(database: Database) -> None:
    clock = Clock()
    service = AccountService(database, clock=clock, key_cache=KeyCache(ttl=3600))
    created = await service.create_key("ivy")
    keeping = asyncio.create_task(service.keep_keys_fresh(write_every=3600))
    await service.authenticate(created.key)
    keeping.cancel()
    await asyncio.gather(keeping, return_exceptions=True)
    assert (await service.get_key(created.record.id)).last_used_at == clock.now
