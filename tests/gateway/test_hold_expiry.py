"""A gateway killed under load leaves its credit slice held; the slice expires and is
released, and nobody is charged twice.

Real ``infermesh serve`` processes on one data directory: the first answers a few
requests and is SIGKILLed while a paid stream is running (settlements of the last
moments may not be written yet: those requests are not charged), the second (started
later) finds the stale slice and gives the credit back. The ledger adds up exactly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from infermesh.catalog.store import CatalogFile
from infermesh.config import Settings
from tests.fakes.engine import run_engine
from tests.gateway.test_billing import GRANT, PER_TOKEN, SECRETS, priced, read_ledger
from tests.support.gateway import create_key, wait_until_available
from tests.support.invariants import ledger_state
from tests.support.processes import RunningProcess, infermesh_command
from tests.support.servers import free_port
from tests.support.waiting import wait_until

ACCOUNT = "crasher"
HOLD_TTL = "3"
REQUESTS = 6


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


def load_then_kill(base_url: str, key: str, process: RunningProcess) -> tuple[str, int]:
    """Answer a few requests, stream a long answer and, at its first words, SIGKILL the
    gateway (some settlements may still be unwritten). (the stream's id, its hold)."""
    headers = {"Authorization": f"Bearer {key}"}
    short = {"model": "metered-slow", "messages": [{"role": "user", "content": "hi"}]}
    long = {
        "model": "metered-slow",
        "messages": [{"role": "user", "content": " ".join(["word"] * 200)}],
        "stream": True,
    }
    with httpx.Client(base_url=base_url, timeout=60) as http:
        with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
            answers = list(
                pool.map(
                    lambda _: http.post("/v1/chat/completions", json=short, headers=headers),
                    range(REQUESTS),
                )
            )
        assert [answer.status_code for answer in answers] == [200] * REQUESTS
        with http.stream("POST", "/v1/chat/completions", json=long, headers=headers) as response:
            assert response.status_code == 200, response.read()
            held = int(response.headers["x-infermesh-hold-micro-usd"])
            chunk: dict[str, Any] = {}
            for line in response.iter_lines():
                chunk = (
                    json.loads(line.removeprefix("data: ")) if line.startswith("data: {") else {}
                )
                if chunk and chunk["choices"][0]["delta"].get("content"):
                    break
            process.process.kill()
            process.process.wait(timeout=30)
    return chunk["id"], held


def test_credit_slices_of_a_killed_gateway_expire_and_nothing_is_charged_twice(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    catalog = tmp_path / "models.toml"
    with run_engine(models=["scripted-1"], api_key="upstream-secret", chunk_delay=0.2) as engine:
        CatalogFile(catalog).save([priced("metered-slow", PER_TOKEN, engine.base_url)])
        settings = Settings(data_dir=data_dir, database_url=None)
        key = asyncio.run(create_key(settings, ACCOUNT, grant=GRANT))

        with serve(data_dir, catalog) as (first, base_url):
            streamed_id, held = load_then_kill(base_url, key, first)
        assert first.process.returncode == -9
        assert held > 0
        balance, summed, entries = read_ledger(settings, ACCOUNT)
        assert summed == balance  # whatever was written before the kill adds up
        assert balance.held >= held  # the stream's hold is inside the gateway's slice
        reserved = [entry for entry in entries if entry.kind == "hold"]
        assert reserved and all(entry.reference.startswith("slice-") for entry in reserved)
        slices = {entry.reference.split(":")[0] for entry in reserved}

        with serve(data_dir, catalog) as (_, base_url):
            wait_until(
                lambda: read_ledger(settings, ACCOUNT)[0].held == 0,
                timeout=30,
                what="the dead gateway's credit slice was released",
            )
            balance, summed, entries = read_ledger(settings, ACCOUNT)
            assert summed == balance
            expired = [entry for entry in entries if entry.reason == "expired"]
            assert {entry.reference for entry in expired} == slices
            assert all(entry.kind == "release" for entry in expired)
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=base_url, timeout=30) as http:
                shown = http.get("/v1/credits/balance", headers=headers).json()
                usage = http.get("/v1/usage", params={"limit": 100}, headers=headers).json()
        costs = {record["id"]: record["cost"]["micro_usd"] for record in usage["data"]}
        assert streamed_id not in costs  # the killed stream was never settled, nor charged
        assert len(costs) <= REQUESTS  # settlements not written before the kill are lost
        charges = [entry for entry in entries if entry.kind == "charge"]
        assert sorted(entry.reference for entry in charges) == sorted(
            record for record, cost in costs.items() if cost
        )  # each written request charged once, and only those
        assert balance.balance == GRANT - sum(costs.values())
        assert (shown["balance"]["micro_usd"], shown["held"]["micro_usd"]) == (balance.balance, 0)
        state = ledger_state(settings)
        assert (state.open_holds, state.unbalanced) == (0, [])
