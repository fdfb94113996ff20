"""Accounts and API keys, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from sqlalchemy import Connection, MetaData, select

from infermesh.accounts import (
    AccountExists,
    AccountService,
    CreatedKey,
    KeyRevoked,
    Principal,
)
from infermesh.accounts.keys import hash_key
from infermesh.errors import InvalidRequest, NotFound
from infermesh.store import ApiKey, Database
from tests.support.clock import Clock


@pytest.fixture
def service(database: Database) -> AccountService:
    return AccountService(database)


def _every_value(connection: Connection) -> list[tuple[str, str, object]]:
    """(table, column, value) of every column of every row of every table."""
    metadata = MetaData()
    metadata.reflect(connection)
    found: list[tuple[str, str, object]] = []
    for table in metadata.sorted_tables:
        for row in connection.execute(table.select()).mappings():
            found.extend((table.name, column, value) for column, value in row.items())
    return found


async def _stored_values(database: Database) -> list[tuple[str, str, object]]:
    async with database.engine.connect() as connection:
        return await connection.run_sync(_every_value)


def _sqlite_files(database: Database) -> list[Path]:
    path = Path(str(database.url.database))
    candidates = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return [candidate for candidate in candidates if candidate.exists()]


async def test_create_key_returns_the_raw_key_once(service: AccountService) -> None:
    created = await service.create_key("alice", name="laptop")
    assert created.key.startswith("sk-im-") and len(created.key) == 6 + 43
    assert re.fullmatch(r"key_[0-9a-f]{16}", created.record.id)
    assert created.record.account == "alice"
    assert created.record.name == "laptop"
    assert created.record.prefix == created.key[:12]
    assert created.record.revoked_at is None and not created.record.revoked
    assert created.record.created_at.tzinfo is not None


async def test_raw_key_is_stored_nowhere(service: AccountService, database: Database) -> None:
    created = await service.create_key("alice", name="laptop")
    assert await service.authenticate(created.key) is not None
    values = await _stored_values(database)
    assert values, "nothing was read back"
    assert [v for v in values if created.key in str(v[2])] == []
    secret_part = created.key[12:]
    assert [v for v in values if secret_part in str(v[2])] == []
    assert ("api_keys", "key_hash", hash_key(created.key)) in values
    assert ("api_keys", "prefix", created.key[:12]) in values
    if database.dialect == "sqlite":
        files = _sqlite_files(database)
        assert files
        for path in files:
            assert secret_part.encode() not in path.read_bytes(), path


async def test_authenticate_a_valid_key(service: AccountService) -> None:
    created = await service.create_key("bob", tier="pro")
    principal = await service.authenticate(created.key)
    assert principal == Principal(
        key_id=created.record.id,
        account_id=created.record.account_id,
        account_name="bob",
        tier="pro",
    )


@pytest.mark.parametrize(
    "raw_key",
    [
        "",
        "sk-im-",
        "hello",
        "Bearer sk-im-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "sk-im-" + "a" * 20,
        "sk-im-" + "a" * 42 + " ",
        "sk-im-" + "a" * 42 + "é",
        "sk-im-" + "a" * 500,
    ],
)
async def test_malformed_keys_are_rejected(service: AccountService, raw_key: str) -> None:
    await service.create_key("carol")
    assert await service.authenticate(raw_key) is None


async def test_unknown_key_is_rejected(service: AccountService) -> None:
    created = await service.create_key("carol")
    other = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")
    assert await service.authenticate(other) is None


async def test_revoked_key_is_rejected(service: AccountService) -> None:
    created = await service.create_key("dave")
    revoked = await service.revoke_key(created.record.id)
    assert revoked.revoked and revoked.id == created.record.id
    assert await service.authenticate(created.key) is None
    again = await service.revoke_key(created.record.id)
    assert again.revoked_at == revoked.revoked_at


async def test_revoke_unknown_key(service: AccountService) -> None:
    with pytest.raises(NotFound):
        await service.revoke_key("key_0000000000000000")


async def test_rotate_gives_a_new_key_and_revokes_the_old(service: AccountService) -> None:
    old = await service.create_key("erin", name="ci")
    new = await service.rotate_key(old.record.id)
    assert new.key != old.key and new.record.id != old.record.id
    assert (new.record.account, new.record.name) == ("erin", "ci")
    assert await service.authenticate(old.key) is None
    principal = await service.authenticate(new.key)
    assert principal is not None and principal.key_id == new.record.id
    listed = {record.id: record for record in await service.list_keys("erin")}
    assert listed[old.record.id].revoked and not listed[new.record.id].revoked


async def test_a_revoked_or_unknown_key_cannot_be_rotated(service: AccountService) -> None:
    created = await service.create_key("frank")
    await service.revoke_key(created.record.id)
    with pytest.raises(KeyRevoked):
        await service.rotate_key(created.record.id)
    with pytest.raises(NotFound):
        await service.rotate_key("key_ffffffffffffffff")
    assert len(await service.list_keys("frank")) == 1


async def test_list_keys(service: AccountService) -> None:
    first = await service.create_key("gina", name="one")
    second = await service.create_key("gina", name="two")
    other = await service.create_key("hank")
    await service.revoke_key(first.record.id)
    assert [r.id for r in await service.list_keys("gina")] == [first.record.id, second.record.id]
    everything = await service.list_keys()
    assert {r.id for r in everything} == {first.record.id, second.record.id, other.record.id}
    assert await service.list_keys("nobody") == []
    assert await service.get_key(second.record.id) == second.record


async def test_create_account(service: AccountService) -> None:
    account = await service.create_account("ivy", tier="pro")
    assert (account.name, account.tier) == ("ivy", "pro")
    with pytest.raises(AccountExists) as raised:
        await service.create_account("ivy")
    assert isinstance(raised.value, InvalidRequest)
    with pytest.raises(InvalidRequest):
        await service.create_account("  ")
    created = await service.create_key("ivy", tier="free")
    assert created.record.account_id == account.id
    principal = await service.authenticate(created.key)
    assert principal is not None and principal.tier == "pro"


async def test_create_key_for_a_missing_account(service: AccountService) -> None:
    with pytest.raises(NotFound):
        await service.create_key("nobody", create_account=False)
    assert await service.list_keys() == []


async def test_last_used_is_written_at_most_once_a_minute(database: Database) -> None:
    clock = Clock()
    service = AccountService(database, clock=clock)
    created = await service.create_key("jack")
    assert (await service.get_key(created.record.id)).last_used_at is None
    await service.authenticate(created.key)
    first_use = clock.now
    clock.advance(30)
    await service.authenticate(created.key)
    assert (await service.get_key(created.record.id)).last_used_at == first_use
    clock.advance(31)
    await service.authenticate(created.key)
    assert (await service.get_key(created.record.id)).last_used_at == clock.now


async def test_bootstrap_only_the_first_time(service: AccountService) -> None:
    created = await service.bootstrap()
    assert created is not None and created.record.account == "default"
    assert await service.authenticate(created.key) is not None
    assert await service.bootstrap() is None
    assert await service.bootstrap("other") is None


async def test_bootstrap_does_nothing_when_an_account_exists(service: AccountService) -> None:
    await service.create_account("someone")
    assert await service.bootstrap() is None
    assert await service.list_keys() == []


async def test_concurrent_bootstrap(connections: list[Database]) -> None:
    services = [AccountService(db) for db in connections]
    results = await asyncio.gather(
        *(service.bootstrap(f"acct{i}") for i, service in enumerate(services))
    )
    winners = [result for result in results if isinstance(result, CreatedKey)]
    assert len(winners) == 1
    assert [r.id for r in await services[0].list_keys()] == [winners[0].record.id]


async def test_concurrent_create_key_for_a_new_account(connections: list[Database]) -> None:
    services = [AccountService(db) for db in connections]
    results = await asyncio.gather(*(service.create_key("shared") for service in services))
    assert len({result.record.account_id for result in results}) == 1
    async with connections[0].session(read_only=True) as session:
        count = len((await session.scalars(select(ApiKey.id))).all())
    assert count == 4
