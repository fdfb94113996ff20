"""A real gateway on a free port, with a real key, for tests that call it over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from infermesh.accounts.service import AccountService
from infermesh.billing.ledger import CreditLedger
from infermesh.billing.money import MICRO_PER_USD
from infermesh.catalog.spec import ModelSpec
from infermesh.config import Settings
from infermesh.gateway.app import create_app
from infermesh.store.database import Database
from tests.support.servers import serve_app


@dataclass
class RunningGateway:
    """A started gateway: where it is and a key that works on it."""

    base_url: str
    key: str
    settings: Settings
    app: Any

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def client(self, **options: Any) -> OpenAI:
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 120)
        options.setdefault("api_key", self.key)
        return OpenAI(base_url=self.api_url, **options)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


TEST_GRANT = 100 * MICRO_PER_USD


async def create_key(
    settings: Settings, account: str = "tester", *, tier: str = "pro", grant: int = TEST_GRANT
) -> str:
    """A key of ``account`` (created with ``tier`` if new), granted ``grant`` micro-USD."""
    database = Database.from_settings(settings)
    try:
        await database.migrate()
        created = await AccountService(database).create_key(account, tier=tier)
        if grant:
            await CreditLedger(database).credit(
                created.record.account_id,
                grant,
                kind="grant",
                reference=f"test-{created.record.id}",
                reason="test credit",
            )
    finally:
        await database.dispose()
    return created.key


def wait_until_available(base_url: str, models: list[str], *, timeout: float = 120) -> None:
    """Poll ``/health`` (with a deadline) until every model in ``models`` is available."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=10) as http:
        while True:
            try:
                health = http.get("/health").json()
            except httpx.TransportError as exc:  # not listening yet
                health = {"models": [], "error": str(exc)}
            available = {model["id"] for model in health["models"] if model["available"]}
            if set(models) <= available:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"models {models} not available after {timeout}s: {health}")
            time.sleep(0.05)


@contextmanager
def start_gateway(
    data_dir: Path,
    *,
    specs: list[ModelSpec] | None = None,
    secrets: Mapping[str, str] | None = None,
    wait_for: list[str] | None = None,
    **settings_overrides: Any,
) -> Iterator[RunningGateway]:
    """Run a gateway on ``data_dir`` (SQLite) with an account key, until the block ends.

    Its credit slices are given back 0.2 s after their last use (not 5 s), so that
    tests see the ledger settle soon after their requests."""
    settings_overrides.setdefault("credit_slice_idle", 0.2)
    settings = Settings(data_dir=data_dir, **settings_overrides)
    key = asyncio.run(create_key(settings))
    app = create_app(settings, specs=specs, secrets=secrets)
    port = settings_overrides.get("port")  # given: the gateway must know its own URL
    with serve_app(app, port=port) as base_url:
        if wait_for:
            wait_until_available(base_url, wait_for)
        yield RunningGateway(base_url=base_url, key=key, settings=settings, app=app)


@contextmanager
def start_gateway_on(backend: str, data_dir: Path, **options: Any) -> Iterator[RunningGateway]:
    """:func:`start_gateway` on SQLite (``backend`` "sqlite") or on a throwaway
    PostgreSQL database ("postgres", dropped afterwards)."""
    if backend == "sqlite":
        with start_gateway(data_dir, **options) as gateway:
            yield gateway
        return
    from tests.support.postgres import postgres_database

    with (
        postgres_database() as database_url,
        start_gateway(data_dir, database_url=database_url, **options) as gateway,
    ):
        yield gateway
