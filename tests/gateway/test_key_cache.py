"""API keys cached by the gateway: no database round trip per request, and changes
applied at once on the gateway that makes them, within milliseconds on the others when
they share a Redis, and within the key cache TTL without one.

Real gateways (uvicorn, SQLite) and the openai SDK. A test-only route makes key changes
through the gateway's own account service (what an admin key API would do). A request
for a model that is not in the catalog tells an accepted key (404) from a refused one
(401) without needing a worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import redis
from fastapi import APIRouter, Request
from openai import OpenAI
from sqlalchemy import event
from typer.testing import CliRunner

from infermesh.accounts.service import AccountService
from infermesh.catalog.spec import ModelSpec
from infermesh.cli.keys import keys_app
from infermesh.config import Settings
from infermesh.gateway.app import create_app
from tests.support.gateway import RunningGateway, create_key
from tests.support.redis import redis_url, require_redis, unique_prefix
from tests.support.servers import serve_app
from tests.support.waiting import wait_until

FRONTIER = "frontier-model"
SPECS = [ModelSpec(id=FRONTIER, tier="frontier", description="in the catalog, served by nobody")]
ADMIN_KEY = "admin-secret-for-key-cache-tests"
REDIS_BOUND = 2.0  # seconds: pub/sub takes milliseconds; this is the test's patience

key_routes = APIRouter(prefix="/test/keys")


def _accounts(request: Request) -> AccountService:
    accounts: AccountService = request.app.state.services.accounts
    return accounts


@key_routes.post("")
async def create_test_key(request: Request) -> dict[str, str]:
    """A new key of the account 'tester', made by this gateway."""
    created = await _accounts(request).create_key("tester")
    return {"key": created.key, "id": created.record.id}


@key_routes.post("/{key_id}/revoke")
async def revoke_test_key(key_id: str, request: Request) -> dict[str, str]:
    """Revoke ``key_id`` through this gateway."""
    await _accounts(request).revoke_key(key_id)
    return {"id": key_id}


@contextmanager
def gateway(data_dir: Path, **overrides: Any) -> Iterator[RunningGateway]:
    """A gateway without a worker, with the test-only key routes."""
    settings = Settings(
        data_dir=data_dir, embedded_worker=False, queue_timeout=0, admin_key=ADMIN_KEY, **overrides
    )
    key = asyncio.run(create_key(settings))
    app = create_app(settings, specs=SPECS)
    app.include_router(key_routes)
    with serve_app(app) as base_url:
        yield RunningGateway(base_url=base_url, key=key, settings=settings, app=app)


def outcome(gateway: RunningGateway, key: str, model: str = "no-such-model") -> str:
    """``refused`` (401), else the error code of the (authenticated) request."""
    client = OpenAI(base_url=gateway.api_url, api_key=key, max_retries=0, timeout=30)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.AuthenticationError:
        return "refused"
    except openai.APIStatusError as exc:
        return str(exc.code or exc.status_code)
    return "answered"


def accepted(gateway: RunningGateway, key: str) -> bool:
    return outcome(gateway, key) != "refused"


def new_key(gateway: RunningGateway) -> dict[str, str]:
    with gateway.http() as http:
        response = http.post("/test/keys")
    response.raise_for_status()
    created: dict[str, str] = response.json()
    return created


def revoke(gateway: RunningGateway, key_id: str) -> None:
    with gateway.http() as http:
        http.post(f"/test/keys/{key_id}/revoke").raise_for_status()


def set_tier(gateway: RunningGateway, tier: str) -> None:
    with gateway.http() as http:
        response = http.patch(
            "/admin/accounts/tester",
            json={"tier": tier},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
    response.raise_for_status()


class KeyLookups:
    """The SELECTs on ``api_keys`` a gateway's database engine sends (an engine event)."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.count = 0
        self._engine = gateway.app.state.services.database.engine.sync_engine

    def __call__(self, *args: Any) -> None:
        sql = str(args[2])
        if sql.lstrip().startswith("SELECT") and "api_keys" in sql:
            self.count += 1

    def __enter__(self) -> KeyLookups:
        event.listen(self._engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self._engine, "before_cursor_execute", self)


# --- one gateway --------------------------------------------------------------------


def test_a_key_revoked_on_this_gateway_is_refused_at_once(tmp_path: Path) -> None:
    with gateway(tmp_path, key_cache_ttl=300) as gw:
        created = new_key(gw)
        assert accepted(gw, created["key"])  # a new key works at once
        assert accepted(gw, created["key"])  # and is cached now
        revoke(gw, created["id"])
        assert outcome(gw, created["key"]) == "refused"


def test_a_key_created_by_another_process_works_at_once(tmp_path: Path) -> None:
    with gateway(tmp_path, key_cache_ttl=300) as gw:
        assert outcome(gw, "sk-im-" + "x" * 43) == "refused"  # an unknown key, remembered
        key = asyncio.run(create_key(gw.settings, "newcomer"))
        assert accepted(gw, key)


def test_a_tier_change_through_the_admin_api_applies_at_once(tmp_path: Path) -> None:
    with gateway(tmp_path, key_cache_ttl=300) as gw:
        assert outcome(gw, gw.key, FRONTIER) != "tier_exceeded"  # a pro account
        set_tier(gw, "free")
        assert outcome(gw, gw.key, FRONTIER) == "tier_exceeded"


def test_known_and_unknown_keys_cost_no_query_per_request(tmp_path: Path) -> None:
    with gateway(tmp_path, key_cache_ttl=300) as gw, KeyLookups(gw) as lookups:
        for _ in range(30):
            assert accepted(gw, gw.key)
        assert lookups.count <= 1
        wrong = "sk-im-" + "w" * 43
        lookups.count = 0
        started = time.monotonic()
        for _ in range(30):
            assert outcome(gw, wrong) == "refused"
        cache = gw.app.state.services.accounts.key_cache
        assert lookups.count <= 1 + (time.monotonic() - started) / cache.negative_ttl


def test_the_key_cache_is_bounded(tmp_path: Path) -> None:
    with gateway(tmp_path, key_cache_ttl=300, key_cache_size=4) as gw:
        cache = gw.app.state.services.accounts.key_cache
        for _ in range(6):
            assert accepted(gw, new_key(gw)["key"])
        assert len(cache) == 4
        for number in range(6):
            assert outcome(gw, "sk-im-" + str(number) * 43) == "refused"
        assert len(cache) == 8  # 4 known keys and the 4 newest unknown ones


# --- several gateways on one database -----------------------------------------------


def _subscribers(channel: str) -> int:
    client = redis.Redis.from_url(redis_url())
    try:
        [(_, count)] = client.pubsub_numsub(channel)
        return int(count)
    finally:
        client.close()


def test_changes_on_one_gateway_reach_the_others_through_redis(tmp_path: Path) -> None:
    """With Redis, a revocation or a tier change on one gateway, or a revocation by the
    CLI, applies on every gateway within milliseconds (the TTL here is 5 minutes)."""
    require_redis()
    prefix = unique_prefix()
    shared = {"key_cache_ttl": 300, "redis_url": redis_url(), "redis_prefix": prefix}
    with gateway(tmp_path, **shared) as first, gateway(tmp_path, **shared) as second:
        channel = f"{prefix}:key-changes"
        wait_until(lambda: _subscribers(channel) >= 2, timeout=10, what="both subscribed")
        created = new_key(first)
        assert accepted(first, created["key"]) and accepted(second, created["key"])
        revoke(first, created["id"])
        assert outcome(first, created["key"]) == "refused"
        wait_until(lambda: not accepted(second, created["key"]), timeout=REDIS_BOUND)

        assert outcome(second, second.key, FRONTIER) != "tier_exceeded"
        set_tier(first, "free")
        wait_until(
            lambda: outcome(second, second.key, FRONTIER) == "tier_exceeded",
            timeout=REDIS_BOUND,
        )

        other = new_key(second)
        assert accepted(first, other["key"]) and accepted(second, other["key"])
        env = {"INFERMESH_REDIS_URL": redis_url(), "INFERMESH_REDIS_PREFIX": prefix}
        result = CliRunner().invoke(
            keys_app, ["revoke", other["id"], "--data-dir", str(tmp_path)], env=env
        )
        assert result.exit_code == 0, result.output
        for gw in (first, second):
            wait_until(lambda gw=gw: not accepted(gw, other["key"]), timeout=REDIS_BOUND)


def test_without_redis_another_gateways_revocation_applies_within_the_ttl(
    tmp_path: Path,
) -> None:
    ttl = 1.0
    with (
        gateway(tmp_path, key_cache_ttl=ttl) as first,
        gateway(tmp_path, key_cache_ttl=ttl) as second,
    ):
        created = new_key(first)
        assert accepted(first, created["key"]) and accepted(second, created["key"])
        revoked_at = time.monotonic()
        revoke(first, created["id"])
        assert outcome(first, created["key"]) == "refused"
        wait_until(lambda: not accepted(second, created["key"]), timeout=ttl + 5)
        assert time.monotonic() - revoked_at < ttl + 1.0


def test_without_a_cache_every_request_looks_the_key_up(tmp_path: Path) -> None:
    with gateway(tmp_path, key_cache_ttl=0) as gw, KeyLookups(gw) as lookups:
        assert gw.app.state.services.accounts.key_cache is None
        for _ in range(3):
            assert accepted(gw, gw.key)
        assert lookups.count == 3
