"""Several ``infermesh serve`` processes on one Redis enforce one set of limits together.

Real gateway processes share one PostgreSQL database and one Redis (under a prefix of
the test's own), each with its in-process worker on the scripted engine. The free tier
(the bootstrap account's) is limited to 5 requests per minute and 1 request at a time:

* requests per minute are counted once for all gateways, whichever answers;
* a stream held open on one gateway takes the account's only slot on the other;
* the slot of a gateway killed mid-stream outlives the slot lifetime while the gateway
  renews it, and expires (from Redis too) once the gateway is dead.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from openai import OpenAI

from infermesh.accounts.service import AccountService
from infermesh.catalog.spec import ModelSpec, ServeSpec
from infermesh.catalog.store import CatalogFile
from infermesh.config import Settings
from infermesh.store.database import Database
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.support.gateway import wait_until_available
from tests.support.postgres import DATABASE_PREFIX, create_database, drop_database, require_postgres
from tests.support.processes import RunningProcess, infermesh_command
from tests.support.redis import keys_with_prefix, redis_url, require_redis, unique_prefix
from tests.support.servers import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgres

KEY = re.compile(r"sk-im-[A-Za-z0-9_-]{20,}")
MODEL = "scripted"
REQUESTS_PER_MINUTE = 5
SLOT_TTL = 2.0
TIER_LIMITS = {"free": {"requests_per_minute": REQUESTS_PER_MINUTE, "concurrent_requests": 1}}
LONG_PROMPT = " ".join(["word"] * 200)  # 201 chunks at 0.2 s: a stream that stays open


@dataclass
class Gateway:
    """One ``infermesh serve`` process and where it listens."""

    process: RunningProcess
    base_url: str

    def client(self, key: str) -> OpenAI:
        return OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=60)


@dataclass
class Mesh:
    """Gateways on one database and one Redis prefix; how to start more of them."""

    engine: ScriptedEngine
    root: Path
    env: dict[str, str]
    prefix: str
    database: Settings
    first_key: str = ""
    gateways: list[Gateway] = field(default_factory=list)

    @contextmanager
    def gateway(self, name: str) -> Iterator[Gateway]:
        """Start ``infermesh serve`` (its own data dir, the shared catalog) until the
        block ends; ready once its model is available."""
        port = free_port()
        command = infermesh_command(
            "serve",
            "--data-dir",
            str(self.root / name),
            "--config",
            str(self.root / "models.toml"),
            "--port",
            str(port),
        )
        process = RunningProcess(command, env=self.env)
        gateway = Gateway(process, f"http://127.0.0.1:{port}")
        try:
            wait_until_available(gateway.base_url, [MODEL], timeout=90)
            yield gateway
        finally:
            process.stop()

    def new_key(self, account: str) -> tuple[str, int]:
        """A key of a new free-tier ``account``, and the account's id."""

        async def create() -> tuple[str, int]:
            database = Database.from_settings(self.database)
            try:
                created = await AccountService(database).create_key(account, tier="free")
            finally:
                await database.dispose()
            return created.key, created.record.account_id

        return asyncio.run(create())

    def pool_key(self, account_id: int) -> str:
        """The Redis ZSET of the account's concurrency slots."""
        return f"{self.prefix}:{{a{account_id}}}:concurrent"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    require_redis()
    require_postgres()
    root = tmp_path_factory.mktemp("mesh")
    database_name = DATABASE_PREFIX + "mesh_" + unique_prefix().removeprefix("imtest-")
    database_url = asyncio.run(create_database(database_name))
    prefix = unique_prefix()
    env = {
        "INFERMESH_DATABASE_URL": database_url,
        "INFERMESH_REDIS_URL": redis_url(),
        "INFERMESH_REDIS_PREFIX": prefix,
        "INFERMESH_TIER_LIMITS": json.dumps(TIER_LIMITS),
        "INFERMESH_LIMIT_SLOT_TTL": str(SLOT_TTL),
        "SCRIPTED_ENGINE_KEY": "upstream-secret",
    }
    try:
        with run_engine(models=["scripted-1"], api_key="upstream-secret") as eng:
            CatalogFile(root / "models.toml").save([_scripted_model(eng.base_url)])
            mesh = Mesh(eng, root, env, prefix, Settings(data_dir=root, database_url=database_url))
            with mesh.gateway("a") as first:
                key = KEY.search(first.process.wait_for_line("sk-im-", timeout=30))
                assert key is not None, first.process.output
                mesh.first_key = key.group(0)
                with mesh.gateway("b") as second:
                    assert "sk-im-" not in second.process.output  # same database: no new key
                    mesh.gateways = [first, second]
                    yield mesh
    finally:
        asyncio.run(drop_database(database_name))
        _delete_keys(prefix)


def _scripted_model(engine_url: str) -> ModelSpec:
    """A free model of the "fast" tier (which the free tier may use) on the engine."""
    return ModelSpec(
        id=MODEL,
        context_length=8192,
        serve=ServeSpec(
            backend="openai",
            engine_model="scripted-1",
            upstream_url=engine_url,
            upstream_key_env="SCRIPTED_ENGINE_KEY",
        ),
    )


def _delete_keys(prefix: str) -> None:
    keys = list(keys_with_prefix(prefix))
    if keys:
        client = redis.Redis.from_url(redis_url())
        try:
            client.delete(*keys)
        finally:
            client.close()


def _slots(store: redis.Redis, pool: str) -> dict[str, float]:
    """The slots in the pool's ZSET: name → the server time it expires at."""
    members = store.zrange(pool, 0, -1, withscores=True)
    return {str(name): float(expires) for name, expires in members}  # type: ignore[str-unpack]


def _ask(client: OpenAI, content: str) -> Any:
    """A short non-streamed request; its raw response (headers and parsed body)."""
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=5
    )


def _refusal(client: OpenAI) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(client, "refused?")
    return refused.value


def _param(error: openai.APIStatusError) -> Any:
    assert isinstance(error.body, dict), error.body
    return error.body["param"]


def _admitted(client: OpenAI) -> bool:
    try:
        _ask(client, "admitted?")
    except openai.RateLimitError:
        return False
    return True


@contextmanager
def _open_stream(client: OpenAI, engine: ScriptedEngine) -> Iterator[Iterator[Any]]:
    """A long, slow stream (0.2 s a word), admitted and started (its first words
    received), closed at the end. Other requests stay quick."""
    engine.chunk_delay = 0.2
    try:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": LONG_PROMPT}],
            max_tokens=400,
            stream=True,
        )
        chunks = iter(stream)
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                break
    finally:
        engine.chunk_delay = 0.0  # the engine streams this one at its pace already
    try:
        yield chunks
    finally:
        with suppress(openai.APIError):
            stream.close()


def test_requests_per_minute_are_one_limit_for_all_gateways(mesh: Mesh) -> None:
    clients = [gateway.client(mesh.first_key) for gateway in mesh.gateways]
    sent_before = len(mesh.engine.requests)
    answered: list[Any] = []
    refused: list[tuple[int, openai.RateLimitError]] = []
    for turn in range(REQUESTS_PER_MINUTE + 4):
        which = turn % 2
        try:
            answered.append(_ask(clients[which], f"turn {turn}"))
        except openai.RateLimitError as exc:
            refused.append((which, exc))

    assert len(answered) == REQUESTS_PER_MINUTE
    assert [r.parse().choices[0].message.content for r in answered] == [
        f"echo: turn {turn}" for turn in range(REQUESTS_PER_MINUTE)
    ]
    assert [r.headers["x-ratelimit-limit-requests"] for r in answered] == ["5"] * 5
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answered] == [
        "4",
        "3",
        "2",
        "1",
        "0",
    ]
    assert {which for which, _ in refused} == {0, 1}  # both gateways refuse
    for _, error in refused:
        assert error.status_code == 429
        assert isinstance(error.body, dict)
        assert (error.body["type"], error.body["code"], error.body["param"]) == (
            "requests",
            "rate_limit_exceeded",
            "requests_per_minute",
        )
        assert "account 'default'" in error.body["message"]
        assert int(error.response.headers["retry-after"]) >= 1
        assert int(error.response.headers["retry-after-ms"]) > 0
        assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(mesh.engine.requests) - sent_before == REQUESTS_PER_MINUTE


def test_a_stream_on_one_gateway_takes_the_only_slot_on_the_other(mesh: Mesh) -> None:
    key, _ = mesh.new_key("one-at-a-time")
    first, second = (gateway.client(key) for gateway in mesh.gateways)
    with _open_stream(first, mesh.engine):
        error = _refusal(second)
        assert isinstance(error.body, dict)
        assert (error.body["type"], error.body["param"]) == ("requests", "concurrent_requests")
        assert "account 'one-at-a-time'" in error.body["message"]
        assert error.response.headers["x-ratelimit-limit-concurrency"] == "1"
        assert error.response.headers["x-ratelimit-remaining-concurrency"] == "0"
        assert error.response.headers["retry-after"] == "1"
    wait_until(lambda: _admitted(second), timeout=15, what="the other gateway admits")


def test_a_killed_gateways_slot_expires_and_was_renewed_while_it_lived(mesh: Mesh) -> None:
    key, account_id = mesh.new_key("killed-mid-stream")
    pool = mesh.pool_key(account_id)
    survivor = mesh.gateways[1].client(key)
    store = redis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        with (
            mesh.gateway("doomed") as doomed,
            _open_stream(doomed.client(key), mesh.engine) as chunks,
        ):
            [(slot, admitted_until)] = _slots(store, pool).items()
            held_since = time.monotonic()
            for _ in chunks:  # time passes as the engine streams (0.2 s a word)
                if time.monotonic() - held_since >= SLOT_TTL + 1.2:
                    break
            assert time.monotonic() - held_since >= SLOT_TTL + 1.2, "the stream ended early"
            # Past its first lifetime, the slot lives on because the gateway renews it.
            assert _slots(store, pool)[slot] > admitted_until + 1.0
            assert _param(_refusal(survivor)) == "concurrent_requests"
            doomed.process.process.kill()
            doomed.process.process.wait(timeout=30)
            assert list(_slots(store, pool)) == [slot]  # the dead gateway released nothing
        assert doomed.process.process.returncode == -9
        killed_at = time.monotonic()
        wait_until(lambda: _admitted(survivor), timeout=15, what="the dead gateway's slot expired")
        assert time.monotonic() - killed_at < SLOT_TTL + 5
        assert slot not in _slots(store, pool)
    finally:
        store.close()
