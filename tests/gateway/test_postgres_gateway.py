"""The gateway on PostgreSQL: the same migrations and code as on SQLite."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import openai
import pytest

from tests.fakes.engine import ScriptedEngine
from tests.gateway.conftest import engine_specs
from tests.support.gateway import start_gateway
from tests.support.postgres import (
    DATABASE_PREFIX,
    create_database,
    drop_database,
    require_postgres,
)


@pytest.mark.postgres
def test_gateway_serves_chat_with_keys_on_postgres(engine: ScriptedEngine, tmp_path: Path) -> None:
    require_postgres()
    name = DATABASE_PREFIX + secrets.token_hex(6)
    database_url = asyncio.run(create_database(name))
    try:
        with start_gateway(
            tmp_path,
            database_url=database_url,
            specs=engine_specs(engine.base_url),
            secrets={"SCRIPTED_ENGINE_KEY": "upstream-secret"},
            wait_for=["scripted"],
        ) as gateway:
            assert gateway.settings.resolved_database_url.startswith("postgresql+asyncpg://")
            response = gateway.client().chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": "on postgres"}]
            )
            assert response.choices[0].message.content == "echo: on postgres"
            with pytest.raises(openai.AuthenticationError):
                gateway.client(api_key="sk-im-wrong").chat.completions.create(
                    model="scripted", messages=[{"role": "user", "content": "x"}]
                )
        assert not list(tmp_path.glob("*.db")), "nothing may fall back to SQLite"
    finally:
        asyncio.run(drop_database(name))
