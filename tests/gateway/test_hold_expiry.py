"""A gateway killed between hold and settlement leaves a hold; it expires and is released.

Real ``infermesh serve`` processes on one data directory: the first is SIGKILLed while a
paid stream is running, the second (started later) finds the stale hold and gives the
credit back, charging nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from infermesh.catalog.store import CatalogFile
from infermesh.config import Settings
from tests.fakes.engine import run_engine
from tests.gateway.test_billing import GRANT, PER_TOKEN, SECRETS, priced, read_ledger
from tests.support.gateway import create_key, wait_until_available
from tests.support.processes import RunningProcess, infermesh_command
from tests.support.servers import free_port
from tests.support.waiting import wait_until

ACCOUNT = "crasher"
HOLD_TTL = "3"


@contextmanager
def serve(data_dir: Path, catalog: Path) -> Iterator[tuple[RunningProcess, str]]:
    """``infermesh serve`` on ``data_dir`` with a short hold TTL, until its model is up."""
    port = free_port()
    command = infermesh_command(
        "serve", "--data-dir", str(data_dir), "--config", str(catalog), "--port", str(port)
    )
    env = {"INFERMESH_HOLD_TTL": HOLD_TTL, "INFERMESH_DATABASE_URL": "", **SECRETS}
    process = RunningProcess(command, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_available(base_url, ["metered-slow"], timeout=60)
        yield process, base_url
    finally:
        process.stop()


def start_stream_then_kill(base_url: str, key: str, process: RunningProcess) -> tuple[str, int]:
    """Stream a long answer; at its first words SIGKILL the gateway. (id, amount held)."""
    body = {
        "model": "metered-slow",
        "messages": [{"role": "user", "content": " ".join(["word"] * 200)}],
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=base_url, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        held = int(response.headers["x-infermesh-hold-micro-usd"])
        chunk: dict[str, Any] = {}
        for line in response.iter_lines():
            chunk = json.loads(line.removeprefix("data: ")) if line.startswith("data: {") else {}
            if chunk and chunk["choices"][0]["delta"].get("content"):
                break
        process.process.kill()
        process.process.wait(timeout=30)
    return chunk["id"], held


def test_a_hold_left_by_a_killed_gateway_expires_and_is_released(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    catalog = tmp_path / "models.toml"
    with run_engine(models=["scripted-1"], api_key="upstream-secret", chunk_delay=0.2) as engine:
        CatalogFile(catalog).save([priced("metered-slow", PER_TOKEN, engine.base_url)])
        settings = Settings(data_dir=data_dir, database_url=None)
        key = asyncio.run(create_key(settings, ACCOUNT, grant=GRANT))

        with serve(data_dir, catalog) as (first, base_url):
            completion_id, held = start_stream_then_kill(base_url, key, first)
        assert first.process.returncode == -9
        assert held > 0
        balance, summed, entries = read_ledger(settings, ACCOUNT)
        assert (balance.balance, balance.held) == (GRANT, held)
        assert summed == balance
        assert (entries[0].kind, entries[0].reference) == ("hold", completion_id)

        with serve(data_dir, catalog) as (_, base_url):
            wait_until(
                lambda: read_ledger(settings, ACCOUNT)[0].held == 0,
                timeout=30,
                what="the stale hold was released",
            )
            balance, summed, entries = read_ledger(settings, ACCOUNT)
            assert (balance.balance, balance.held) == (GRANT, 0)
            assert summed == balance
            release = entries[0]
            assert (release.kind, release.reference, release.reason) == (
                "release",
                completion_id,
                "expired",
            )
            assert (release.balance_change, release.held_change) == (0, -held)
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=base_url, timeout=30) as http:
                shown = http.get("/v1/credits/balance", headers=headers).json()
                usage = http.get("/v1/usage", headers=headers).json()
            assert (shown["balance"]["micro_usd"], shown["held"]["micro_usd"]) == (GRANT, 0)
            assert usage["data"] == []  # nothing was settled, so nothing was charged
