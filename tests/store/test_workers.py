"""Worker tokens and worker state, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, MetaData, inspect, select, text

from infermesh.accounts import AccountService
from infermesh.accounts.keys import hash_key
from infermesh.accounts.workers import WorkerIdentity, WorkerScope, WorkerTokenService
from infermesh.errors import InvalidRequest, NotFound
from infermesh.store import Account, Database, UsageEntry, head_revision
from infermesh.store.database import migrations_config
from tests.support.clock import Clock

INITIAL_REVISION = "0001_initial"
BEFORE_SCOPES = "0004_rate_limits"
HUGE = 2**40


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(database: Database, clock: Clock) -> WorkerTokenService:
    return WorkerTokenService(database, clock=clock)


def _every_value(connection: Connection) -> list[tuple[str, str, object]]:
    """(table, column, value) of every column of every row of every table."""
    metadata = MetaData()
    metadata.reflect(connection)
    found: list[tuple[str, str, object]] = []
    for table in metadata.sorted_tables:
        for row in connection.execute(table.select()).mappings():
            found.extend((table.name, column, value) for column, value in row.items())
    return found


def _sqlite_files(database: Database) -> list[Path]:
    path = Path(str(database.url.database))
    candidates = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return [candidate for candidate in candidates if candidate.exists()]


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _alembic(connection: Connection, action: str, revision: str) -> None:
    config = migrations_config()
    config.attributes["connection"] = connection
    getattr(command, action)(config, revision)


async def _run_migration(database: Database, action: str, revision: str) -> set[str]:
    """Upgrade or downgrade ``database`` to ``revision``; the tables it then has."""
    async with database.engine.begin() as connection:
        await connection.run_sync(_alembic, action, revision)
    async with database.engine.connect() as connection:
        return await connection.run_sync(_table_names)


async def test_create_returns_the_token_once(service: WorkerTokenService, clock: Clock) -> None:
    created = await service.create("rig-1", operator="gpu-co")
    assert created.token.startswith("wt-im-") and len(created.token) == 6 + 43
    record = created.record
    assert re.fullmatch(r"wrk_[0-9a-f]{16}", record.id)
    assert (record.name, record.operator, record.prefix) == ("rig-1", "gpu-co", created.token[:12])
    assert record.created_at == clock.now
    assert (record.revoked_at, record.last_seen_at, record.node_id) == (None, None, None)
    assert (record.online, record.status, record.models) == (False, "offline", ())
    assert (record.jobs_served, record.jobs_failed) == (0, 0)
    assert record.scope == WorkerScope(max_connections=2, max_slots=64, allowed_models=None)
    assert await service.get(record.id) == record


async def test_the_operator_account_is_created_or_reused(
    service: WorkerTokenService, database: Database
) -> None:
    await AccountService(database).create_account("big-gpus", tier="pro")
    await service.create("a", operator="big-gpus")
    await service.create("b")
    await service.create("c")
    async with database.session(read_only=True) as session:
        accounts = (await session.execute(select(Account.name, Account.tier))).all()
    assert sorted(accounts) == [("big-gpus", "pro"), ("default", "free")]
    assert sorted(r.operator for r in await service.list()) == ["big-gpus", "default", "default"]


@pytest.mark.parametrize(
    ("name", "operator"), [("", "x"), ("  ", "x"), ("n" * 201, "x"), ("n", "")]
)
async def test_invalid_names_are_refused(
    service: WorkerTokenService, name: str, operator: str
) -> None:
    with pytest.raises(InvalidRequest):
        await service.create(name, operator=operator)
    assert await service.list() == []


async def test_raw_token_is_stored_nowhere(service: WorkerTokenService, database: Database) -> None:
    created = await service.create("rig-1")
    assert await service.authenticate(created.token) is not None
    await service.mark_connected(created.record.id, node_id="node-1", models=["tiny"])
    async with database.engine.connect() as connection:
        values = await connection.run_sync(_every_value)
    secret_part = created.token[12:]
    assert [v for v in values if secret_part in str(v[2])] == []
    assert ("workers", "token_hash", hash_key(created.token)) in values
    assert ("workers", "prefix", created.token[:12]) in values
    if database.dialect == "sqlite":
        files = _sqlite_files(database)
        assert files
        for path in files:
            assert secret_part.encode() not in path.read_bytes(), path


async def test_authenticate(service: WorkerTokenService, database: Database) -> None:
    created = await service.create("rig-1", operator="gpu-co")
    identity = await service.authenticate(created.token)
    async with database.session(read_only=True) as session:
        account_id = await session.scalar(select(Account.id).where(Account.name == "gpu-co"))
    assert identity == WorkerIdentity(
        worker_id=created.record.id,
        name="rig-1",
        operator_account_id=account_id,
        operator_name="gpu-co",
    )
    other = created.token[:-1] + ("A" if created.token[-1] != "A" else "B")
    assert await service.authenticate(other) is None


@pytest.mark.parametrize(
    "raw_token",
    ["", "wt-im-", "wt-im-" + "a" * 20, "Bearer wt-im-" + "a" * 43, "wt-im-" + "a" * 42 + "é"],
)
async def test_malformed_tokens_are_refused(service: WorkerTokenService, raw_token: str) -> None:
    await service.create("rig-1")
    assert await service.authenticate(raw_token) is None


async def test_tokens_and_api_keys_are_not_interchangeable(
    service: WorkerTokenService, database: Database
) -> None:
    accounts = AccountService(database)
    key = await accounts.create_key("gpu-co")
    token = await service.create("rig-1", operator="gpu-co")
    assert await service.authenticate(key.key) is None
    assert await accounts.authenticate(token.token) is None
    assert await service.authenticate("wt-im-" + key.key.removeprefix("sk-im-")) is None
    assert await accounts.authenticate("sk-im-" + token.token.removeprefix("wt-im-")) is None
    assert await service.authenticate(token.token) is not None
    assert await accounts.authenticate(key.key) is not None


async def test_revoke(service: WorkerTokenService, clock: Clock) -> None:
    created = await service.create("rig-1")
    worker_id = created.record.id
    await service.mark_connected(worker_id, node_id="node-1", models=["tiny"])
    assert not await service.is_revoked(worker_id)
    revoked = await service.revoke(worker_id)
    assert (revoked.revoked_at, revoked.online, revoked.status) == (clock.now, False, "revoked")
    assert await service.authenticate(created.token) is None
    assert await service.is_revoked(worker_id)
    clock.advance(60)
    again = await service.revoke(worker_id)
    assert again.revoked_at == revoked.revoked_at
    await service.mark_connected(worker_id, node_id="node-2", models=["tiny"])
    after = await service.get(worker_id)
    assert (after.online, after.node_id, after.status) == (False, "node-1", "revoked")


async def test_unknown_workers(service: WorkerTokenService) -> None:
    for action in (service.get, service.revoke):
        with pytest.raises(NotFound):
            await action("wrk_0000000000000000")
    assert await service.is_revoked("wrk_0000000000000000")
    await service.mark_connected("wrk_0000000000000000", node_id="n", models=[])
    await service.mark_seen("wrk_0000000000000000")
    await service.add_served("wrk_0000000000000000", served=1)
    assert await service.list() == []


async def test_connection_state(service: WorkerTokenService, clock: Clock) -> None:
    worker_id = (await service.create("rig-1")).record.id
    connected_at = clock.now
    await service.mark_connected(worker_id, node_id="node-1", models=["tiny", "big"])
    record = await service.get(worker_id)
    assert (record.online, record.status, record.node_id) == (True, "online", "node-1")
    assert (record.models, record.last_seen_at) == (("tiny", "big"), connected_at)
    clock.advance(5)
    await service.mark_seen(worker_id)
    assert (await service.get(worker_id)).last_seen_at == clock.now
    await service.mark_disconnected(worker_id)
    record = await service.get(worker_id)
    assert (record.online, record.status, record.models) == (False, "offline", ("tiny", "big"))
    await service.mark_connected(worker_id, node_id="node-2", models=[])
    record = await service.get(worker_id)
    assert (record.online, record.node_id, record.models) == (True, "node-2", ())


async def test_only_workers_silent_too_long_are_marked_offline(
    service: WorkerTokenService, clock: Clock
) -> None:
    """A gateway that starts marks offline the workers whose gateway died (silent too
    long), not those another gateway of the network holds now."""
    ids = [(await service.create(f"rig-{i}")).record.id for i in range(3)]
    for worker_id in ids[:2]:
        await service.mark_connected(worker_id, node_id=worker_id, models=["tiny"])
    statuses = {r.id: r.status for r in await service.list()}
    assert [statuses[worker_id] for worker_id in ids] == ["online", "online", "offline"]
    clock.advance(90)
    await service.mark_seen(ids[1])  # still connected to another gateway
    await service.mark_stale_offline(silent_for=timedelta(seconds=60))
    statuses = {r.id: r.status for r in await service.list()}
    assert [statuses[worker_id] for worker_id in ids] == ["offline", "online", "offline"]


async def test_add_served(service: WorkerTokenService) -> None:
    worker_id = (await service.create("rig-1")).record.id
    other_id = (await service.create("rig-2")).record.id
    await service.add_served(worker_id, served=3)
    await service.add_served(worker_id, failed=2)
    await service.add_served(worker_id, served=1, failed=1)
    await service.add_served(worker_id)
    with pytest.raises(ValueError):
        await service.add_served(worker_id, served=-1)
    record = await service.get(worker_id)
    assert (record.jobs_served, record.jobs_failed) == (4, 3)
    other = await service.get(other_id)
    assert (other.jobs_served, other.jobs_failed) == (0, 0)


async def test_concurrent_add_served_sums_exactly(connections: list[Database]) -> None:
    services = [WorkerTokenService(db) for db in connections]
    worker_id = (await services[0].create("rig-1")).record.id
    await asyncio.gather(
        *(
            services[i % len(services)].add_served(worker_id, served=i + 1, failed=i % 2)
            for i in range(20)
        )
    )
    record = await services[0].get(worker_id)
    assert (record.jobs_served, record.jobs_failed) == (sum(range(1, 21)), 10)


async def test_concurrent_create_for_a_new_operator(connections: list[Database]) -> None:
    services = [WorkerTokenService(db) for db in connections]
    results = await asyncio.gather(
        *(service.create(f"rig-{i}", operator="new-co") for i, service in enumerate(services))
    )
    assert {result.record.operator for result in results} == {"new-co"}
    async with connections[0].session(read_only=True) as session:
        names = (await session.scalars(select(Account.name))).all()
    assert names == ["new-co"]


async def test_upgrade_from_0001_keeps_the_data(database_url: str) -> None:
    database = Database(database_url)
    try:
        tables = await _run_migration(database, "upgrade", INITIAL_REVISION)
        assert "api_keys" in tables and "workers" not in tables
        accounts = AccountService(database)
        key = await accounts.create_key("old-co", name="before", tier="pro")
        assert await database.migrate() == head_revision()
        assert await database.current_revision() == head_revision()
        assert await accounts.get_key(key.record.id) == key.record
        principal = await accounts.authenticate(key.key)
        assert principal is not None
        assert (principal.account_name, principal.tier) == ("old-co", "pro")
        workers = WorkerTokenService(database)
        created = await workers.create("rig-1", operator="old-co")
        identity = await workers.authenticate(created.token)
        assert identity is not None and identity.operator_account_id == key.record.account_id
    finally:
        await database.dispose()


async def test_downgrade_to_0001_drops_only_workers(database: Database) -> None:
    key = await AccountService(database).create_key("old-co")
    await WorkerTokenService(database).create("rig-1", operator="old-co")
    tables = await _run_migration(database, "downgrade", INITIAL_REVISION)
    assert "workers" not in tables and "api_keys" in tables
    assert await database.current_revision() == INITIAL_REVISION
    assert await AccountService(database).authenticate(key.key) is not None
    assert await database.migrate() == head_revision()
    assert await WorkerTokenService(database).list() == []


# --- scopes ----------------------------------------------------------------------------


async def test_a_token_carries_its_scope(service: WorkerTokenService) -> None:
    scope = WorkerScope(max_connections=5, max_slots=300, allowed_models=(" raw", "tiny", "raw"))
    created = await service.create("rig-1", scope=scope)
    expected = WorkerScope(max_connections=5, max_slots=300, allowed_models=("raw", "tiny"))
    assert created.record.scope == expected
    assert (await service.get(created.record.id)).scope == expected
    assert [record.scope for record in await service.list()] == [expected]
    identity = await service.authenticate(created.token)
    assert identity is not None and identity.scope == expected
    default = await service.create("rig-2")
    identity = await service.authenticate(default.token)
    assert identity is not None and identity.scope == WorkerScope()


@pytest.mark.parametrize(
    ("scope", "param"),
    [
        (WorkerScope(max_connections=0), "max_connections"),
        (WorkerScope(max_connections=10_001), "max_connections"),
        (WorkerScope(max_slots=0), "max_slots"),
        (WorkerScope(max_slots=1_000_001), "max_slots"),
        (WorkerScope(allowed_models=()), "allowed_models"),
        (WorkerScope(allowed_models=("raw", " ")), "allowed_models"),
        (WorkerScope(allowed_models=("m" * 201,)), "allowed_models"),
        (WorkerScope(allowed_models=tuple(f"m{i}" for i in range(257))), "allowed_models"),
    ],
)
async def test_invalid_scopes_are_refused(
    service: WorkerTokenService, scope: WorkerScope, param: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await service.create("rig-1", scope=scope)
    assert raised.value.param == param
    assert await service.list() == []


async def test_allowed_models_null_means_any(
    service: WorkerTokenService, database: Database
) -> None:
    await service.create("any", scope=WorkerScope(allowed_models=None))
    await service.create("some", scope=WorkerScope(allowed_models=("raw",)))
    async with database.session(read_only=True) as session:
        rows = await session.execute(text("SELECT name, allowed_models FROM workers"))
        stored = {name: allowed for name, allowed in rows}
    assert stored["any"] is None  # SQL NULL, not the JSON text 'null'
    assert stored["some"] is not None


# --- 64-bit counts and the 0005 migration ---------------------------------------------


def _usage(record_id: str, account_id: int, *, tokens: int) -> UsageEntry:
    return UsageEntry(
        id=record_id,
        account_id=account_id,
        request_id=f"req-{record_id}",
        model="tiny",
        status="ok",
        prompt_tokens=tokens,
        completion_tokens=tokens + 1,
        latency_ms=tokens + 2,
    )


async def _read_usage(database: Database, record_id: str) -> tuple[int, int, int]:
    async with database.session(read_only=True) as session:
        entry = await session.get(UsageEntry, record_id)
    assert entry is not None
    return entry.prompt_tokens, entry.completion_tokens, entry.latency_ms


async def test_counts_are_64_bit(service: WorkerTokenService, database: Database) -> None:
    account = await AccountService(database).create_account("big-user")
    async with database.session() as session, session.begin():
        session.add(_usage("u-huge", account.id, tokens=HUGE))
    assert await _read_usage(database, "u-huge") == (HUGE, HUGE + 1, HUGE + 2)
    worker_id = (await service.create("rig-1")).record.id
    await service.add_served(worker_id, served=HUGE, failed=HUGE + 1)
    await service.add_served(worker_id, served=1)
    record = await service.get(worker_id)
    assert (record.jobs_served, record.jobs_failed) == (HUGE + 1, HUGE + 1)


async def _insert_old_rows(database: Database) -> None:
    """An account, a worker and a usage record as revision 0004 stored them."""
    async with database.engine.begin() as connection:
        await connection.execute(text("INSERT INTO accounts (id, name) VALUES (1, 'old-co')"))
        await connection.execute(
            text(
                "INSERT INTO workers (id, name, operator_account_id, token_hash, prefix,"
                " online, models, jobs_served, jobs_failed)"
                " VALUES ('wrk_0000000000000001', 'old-rig', 1, :hash, 'wt-im-old', "
                " false, '[\"tiny\"]', 7, 2)"
            ),
            {"hash": "0" * 64},
        )
        await connection.execute(
            text(
                "INSERT INTO usage_records (id, account_id, request_id, model, stream, status,"
                " prompt_tokens, completion_tokens, cost, operator_earning, latency_ms,"
                " created_at)"
                " VALUES ('u-old', 1, 'req-old', 'tiny', false, 'ok', 11, 12, 5, 1, 13,"
                " CURRENT_TIMESTAMP)"
            )
        )


async def test_upgrade_to_0005_keeps_the_data(database_url: str) -> None:
    database = Database(database_url)
    try:
        await _run_migration(database, "upgrade", BEFORE_SCOPES)
        await _insert_old_rows(database)
        assert await database.migrate() == head_revision()
        service = WorkerTokenService(database)
        old = await service.get("wrk_0000000000000001")
        assert (old.name, old.operator, old.models) == ("old-rig", "old-co", ("tiny",))
        assert (old.jobs_served, old.jobs_failed) == (7, 2)
        assert old.scope == WorkerScope(max_connections=2, max_slots=64, allowed_models=None)
        assert await _read_usage(database, "u-old") == (11, 12, 13)
        async with database.session() as session, session.begin():
            session.add(_usage("u-huge", 1, tokens=HUGE))
        assert await _read_usage(database, "u-huge") == (HUGE, HUGE + 1, HUGE + 2)
        await service.add_served(old.id, served=HUGE)
        assert (await service.get(old.id)).jobs_served == HUGE + 7
    finally:
        await database.dispose()


async def test_downgrade_from_0005_drops_the_scope(database: Database) -> None:
    service = WorkerTokenService(database)
    created = await service.create("rig-1", scope=WorkerScope(3, 9, ("raw",)))
    await service.add_served(created.record.id, served=4)
    await _run_migration(database, "downgrade", BEFORE_SCOPES)
    async with database.engine.connect() as connection:
        columns = await connection.run_sync(
            lambda sync: {column["name"] for column in inspect(sync).get_columns("workers")}
        )
    assert not {"max_connections", "max_slots", "allowed_models"} & columns
    assert {"jobs_served", "models"} <= columns
    assert await database.migrate() == head_revision()
    record = await service.get(created.record.id)
    assert (record.jobs_served, record.scope) == (4, WorkerScope())
