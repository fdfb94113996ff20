"""Async jobs outlive their gateway, and several gateways share one queue.

Real ``infermesh serve`` processes on a scripted engine. One gateway is SIGKILLed with
jobs running and jobs waiting; started again on the same data directory, it claims the
dead runs once their lease lapses and runs the rest: every job completes once, on the
hold it was enqueued with, and is charged once. Two gateways on one PostgreSQL
database take a few hundred jobs from one queue: none is lost, none runs twice, both
gateways run some, and every account's ledger adds up.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from infermesh.accounts.service import AccountService
from infermesh.billing.ledger import CreditLedger
from infermesh.billing.records import BalanceRecord
from infermesh.catalog.store import CatalogFile
from infermesh.config import Settings
from infermesh.store import AsyncJob, Database, LedgerEntry, UsageEntry
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.gateway.test_billing import PER_TOKEN, SECRETS, priced, token_cost
from tests.support.gateway import create_key, wait_until_available
from tests.support.invariants import ledger_state
from tests.support.postgres import postgres_database
from tests.support.processes import RunningProcess, infermesh_command
from tests.support.servers import free_port
from tests.support.waiting import wait_until

MODEL = "batch"
GRANT = 5_000_000
ASYNC = {"Prefer": "respond-async"}
MAX_TOKENS = 32
UPSTREAM_KEY = "upstream-secret"


# --- gateway processes ----------------------------------------------------------------


@dataclass
class GatewayProcess:
    """An ``infermesh serve`` process whose model is available at ``base_url``."""

    process: RunningProcess
    base_url: str

    def kill(self) -> None:
        """SIGKILL the gateway: nothing of its shutdown runs."""
        self.process.process.kill()
        self.process.process.wait(timeout=30)


@contextmanager
def serve_gateway(data_dir: Path, catalog: Path, env: dict[str, str]) -> Iterator[GatewayProcess]:
    """``infermesh serve`` on ``data_dir`` with ``env`` on a free port, until its model is
    available; stopped (SIGTERM, then SIGKILL) when the block ends."""
    port = free_port()
    command = infermesh_command(
        "serve", "--data-dir", str(data_dir), "--config", str(catalog), "--port", str(port)
    )
    process = RunningProcess(command, env={**SECRETS, **env})
    base_url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_available(base_url, [MODEL], timeout=90)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- gateway output ---\n{process.output}") from None
        yield GatewayProcess(process, base_url)
    finally:
        process.stop()


def job_env(**settings: object) -> dict[str, str]:
    """``INFERMESH_<NAME>`` variables of these settings."""
    return {f"INFERMESH_{name.upper()}": str(value) for name, value in settings.items()}


def enqueue(http: httpx.Client, key: str, prompt: str) -> str:
    """Queue ``prompt`` as a job of ``key``'s account; its id."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
    }
    headers = {**ASYNC, "Authorization": f"Bearer {key}"}
    response = http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def prompts_sent(engine: ScriptedEngine) -> Counter[str]:
    """How many chat requests the engine received for each prompt."""
    sent: Counter[str] = Counter()
    for body in list(engine.requests):
        content = body["messages"][-1]["content"]
        if isinstance(content, list):
            content = " ".join(part.get("text", "") for part in content)
        sent[content] += 1
    return sent


# --- the database, read by the test ---------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    account_id: int
    status: str
    retries: int
    result: dict[str, Any] | None


@dataclass(frozen=True)
class Books:
    """What the database holds of jobs, usage and the ledger."""

    jobs: dict[str, JobRow]
    usage: dict[str, list[tuple[int, int]]]
    """Usage record id → (account id, cost) of each record with that id."""
    entries: list[tuple[int, str, int, int, str, str | None]]
    """(account, kind, balance change, held change, reference, reason) of each entry."""
    balances: dict[int, BalanceRecord]
    totals: dict[int, BalanceRecord]

    def entries_of(self, reference: str) -> list[tuple[str, int, int, str | None]]:
        return [
            (kind, balance, held, reason)
            for _, kind, balance, held, ref, reason in self.entries
            if ref == reference
        ]


class DatabaseReader:
    """The gateways' database, read from the test on one event loop of its own."""

    def __init__(self, settings: Settings) -> None:
        self._runner = asyncio.Runner()
        self._database = Database.from_settings(settings)

    def close(self) -> None:
        self._runner.run(self._database.dispose())
        self._runner.close()

    def run(self, work: Any) -> Any:
        return self._runner.run(work)

    def account_id(self, name: str) -> int:
        account = self.run(AccountService(self._database).get_account(name))
        return int(account.id)

    def statuses(self) -> Counter[str]:
        """How many jobs have each status."""
        return Counter(dict(self.run(self._statuses())))

    async def _statuses(self) -> list[tuple[str, int]]:
        query = select(AsyncJob.status, func.count()).group_by(AsyncJob.status)
        async with self._database.session(read_only=True) as session:
            return [(status, int(count)) for status, count in await session.execute(query)]

    def books(self, account_ids: Sequence[int]) -> Books:
        books: Books = self.run(self._books(account_ids))
        return books

    async def _books(self, account_ids: Sequence[int]) -> Books:
        async with self._database.session(read_only=True) as session:
            jobs = {
                job.id: JobRow(
                    job.account_id,
                    job.status,
                    job.retries,
                    json.loads(job.result) if job.result else None,
                )
                for job in (await session.scalars(select(AsyncJob))).all()
            }
            usage: dict[str, list[tuple[int, int]]] = {}
            for record in (await session.scalars(select(UsageEntry))).all():
                usage.setdefault(record.id, []).append((record.account_id, int(record.cost)))
            entries = [
                (
                    entry.account_id,
                    entry.kind,
                    int(entry.balance_change),
                    int(entry.held_change),
                    entry.reference,
                    entry.reason,
                )
                for entry in (await session.scalars(select(LedgerEntry))).all()
            ]
        ledger = CreditLedger(self._database)
        balances = {account: await ledger.balance(account) for account in account_ids}
        totals = {account: await ledger.ledger_totals(account) for account in account_ids}
        return Books(jobs, usage, entries, balances, totals)


@contextmanager
def read_database(settings: Settings) -> Iterator[DatabaseReader]:
    reader = DatabaseReader(settings)
    try:
        yield reader
    finally:
        reader.close()


def cost_of(job: JobRow) -> int:
    assert job.result is not None
    cost: int = job.result["usage"]["cost_micro_usd"]
    return cost


def assert_completed_once(books: Books, prompts: dict[str, str]) -> None:
    """Every job of ``prompts`` (id → prompt) is complete with the engine's answer,
    priced right, and has exactly one usage record, of its cost."""
    assert set(books.jobs) == set(prompts)
    statuses = Counter(job.status for job in books.jobs.values())
    assert statuses == {"complete": len(prompts)}, statuses
    for job_id, prompt in prompts.items():
        job = books.jobs[job_id]
        assert job.result is not None, job_id
        assert job.result["object"] == "chat.completion"
        assert job.result["choices"][0]["message"]["content"] == f"echo: {prompt}"
        usage = job.result["usage"]
        assert cost_of(job) == token_cost(usage["prompt_tokens"], usage["completion_tokens"])
        assert cost_of(job) > 0
        assert books.usage.get(job_id) == [(job.account_id, cost_of(job))], job_id
    assert set(books.usage) == set(prompts)  # no usage record of anything else


def assert_ledger_exact(books: Books, grants: dict[int, int]) -> None:
    """Each account (id → what it was granted) paid exactly its jobs' costs, holds
    nothing, and its ledger entries sum to its balance."""
    for account, grant in grants.items():
        spent = sum(cost_of(job) for job in books.jobs.values() if job.account_id == account)
        assert books.balances[account] == BalanceRecord(account, grant - spent, 0)
        assert books.totals[account] == books.balances[account]
    for job_id, job in books.jobs.items():
        entries = books.entries_of(job_id)
        kinds = Counter(kind for kind, *_ in entries)
        assert kinds == {"hold": 1, "charge": 1, "release": 1}, (job_id, entries)
        held = next(held for kind, _, held, _ in entries if kind == "hold")
        assert ("charge", -cost_of(job), -cost_of(job), None) in entries
        assert ("release", 0, cost_of(job) - held, None) in entries  # the rest, not expired


# --- a gateway killed with jobs running ------------------------------------------------

CRASH_JOBS = 20
CRASH_ENV = job_env(
    database_url="",
    job_lease=1.5,
    job_poll_interval=0.05,
    job_retry_base=0.05,
    job_retry_cap=0.2,
    job_concurrent=6,
    job_runners=6,
)


def test_jobs_of_a_killed_gateway_complete_once_and_are_charged_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    catalog = tmp_path / "models.toml"
    settings = Settings(data_dir=data_dir, database_url=None)
    with (
        run_engine(models=["scripted-1"], api_key=UPSTREAM_KEY, chunk_delay=0.1) as engine,
        ExitStack() as stack,
    ):
        CatalogFile(catalog).save([priced(MODEL, PER_TOKEN, engine.base_url)])
        key = asyncio.run(create_key(settings, "survivor", grant=GRANT))
        database = stack.enter_context(read_database(settings))
        account_id = database.account_id("survivor")
        texts = [f"crash job {index} " + " ".join(["word"] * 8) for index in range(CRASH_JOBS)]

        with (
            serve_gateway(data_dir, catalog, CRASH_ENV) as first,
            httpx.Client(base_url=first.base_url, timeout=60) as http,
        ):
            prompts = {enqueue(http, key, text): text for text in texts}

            def some_done_some_mid_run_some_waiting() -> bool:
                statuses = database.statuses()
                return (
                    statuses["complete"] > 0
                    and statuses["queued"] > 0
                    and any(
                        prompts_sent(engine)[prompts[job_id]]
                        for job_id, job in database.books([]).jobs.items()
                        if job.status == "processing"
                    )
                )

            wait_until(
                some_done_some_mid_run_some_waiting,
                timeout=60,
                what="some jobs are done, some running on the engine and some waiting",
            )
            first.kill()
        assert first.process.process.returncode == -9

        at_kill = database.books([account_id])
        sent_at_kill = prompts_sent(engine)
        running = {job_id for job_id, job in at_kill.jobs.items() if job.status == "processing"}
        mid_run = {job_id for job_id in running if sent_at_kill[prompts[job_id]]}
        waiting = {job_id for job_id, job in at_kill.jobs.items() if job.status == "queued"}
        done = {job_id for job_id, job in at_kill.jobs.items() if job.status == "complete"}
        assert mid_run and waiting and done, at_kill.jobs
        assert at_kill.balances[account_id].held > 0  # the unfinished jobs' holds

        with serve_gateway(data_dir, catalog, CRASH_ENV) as second:
            wait_until(
                lambda: database.statuses() == {"complete": CRASH_JOBS},
                timeout=60,
                what="every job completed after the restart",
            )
            with httpx.Client(base_url=second.base_url, timeout=30) as http:
                shown = http.get(
                    "/v1/credits/balance", headers={"Authorization": f"Bearer {key}"}
                ).json()

        books = database.books([account_id])
        assert_completed_once(books, prompts)
        assert_ledger_exact(books, {account_id: GRANT})
        assert (shown["balance"]["micro_usd"], shown["held"]["micro_usd"]) == (
            books.balances[account_id].balance,
            0,
        )
        sent = prompts_sent(engine)
        for job_id, prompt in prompts.items():
            assert sent[prompt] >= 1, prompt
            if job_id in mid_run:  # killed on the engine, run again after the restart
                assert sent[prompt] >= 2, prompt
                assert books.jobs[job_id].retries >= 1
            if job_id not in running:  # it was done or still waiting: it ran once
                assert sent[prompt] == 1, prompt
        state = ledger_state(settings)
        assert (state.open_holds, state.unbalanced) == (0, [])


# --- two gateways, one PostgreSQL queue -------------------------------------------------

SCALE_JOBS = 300
SCALE_ACCOUNTS = 3
SCALE_ENV = job_env(
    job_lease=20,
    job_poll_interval=0.05,
    job_retry_base=0.05,
    job_retry_cap=0.2,
    job_concurrent=1000,
    job_runners=16,
)


def enqueue_all(base_url: str, key: str, texts: list[str]) -> dict[str, str]:
    """Queue each of ``texts`` through the gateway at ``base_url``; job id → prompt."""
    with httpx.Client(base_url=base_url, timeout=60) as http:
        return {enqueue(http, key, text): text for text in texts}


@pytest.mark.postgres
def test_two_gateways_on_postgres_run_every_job_exactly_once(tmp_path: Path) -> None:
    with (
        postgres_database() as database_url,
        run_engine(models=["scripted-a", "scripted-b"], api_key=UPSTREAM_KEY) as engine,
        ExitStack() as stack,
    ):
        settings = Settings(data_dir=tmp_path / "tester", database_url=database_url)
        names = [f"tenant-{index}" for index in range(SCALE_ACCOUNTS)]
        keys = [asyncio.run(create_key(settings, name, grant=GRANT)) for name in names]
        database = stack.enter_context(read_database(settings))
        account_ids = [database.account_id(name) for name in names]
        gateways = []
        for side in ("a", "b"):  # each sends its engine requests as model "scripted-<side>"
            catalog = tmp_path / f"models-{side}.toml"
            CatalogFile(catalog).save(
                [priced(MODEL, PER_TOKEN, engine.base_url, engine_model=f"scripted-{side}")]
            )
            env = {**SCALE_ENV, "INFERMESH_DATABASE_URL": database_url}
            gateways.append(stack.enter_context(serve_gateway(tmp_path / side, catalog, env)))

        batches = [(gateway.base_url, key, []) for gateway in gateways for key in keys]
        for index in range(SCALE_JOBS):
            batches[index % len(batches)][2].append(f"scale job {index} to run once")
        with ThreadPoolExecutor(max_workers=len(batches)) as pool:
            enqueued = list(pool.map(lambda batch: enqueue_all(*batch), batches))
        prompts = {job_id: text for batch in enqueued for job_id, text in batch.items()}
        assert len(prompts) == SCALE_JOBS

        wait_until(
            lambda: database.statuses() == {"complete": SCALE_JOBS},
            timeout=90,
            what=f"all {SCALE_JOBS} jobs completed",
        )
        books = database.books(account_ids)
        assert_completed_once(books, prompts)
        sent = prompts_sent(engine)
        assert sent == Counter(prompts.values())  # each job ran on the engine exactly once
        by_gateway = Counter(body["model"] for body in list(engine.requests))
        assert set(by_gateway) == {"scripted-a", "scripted-b"}, by_gateway  # both ran jobs
        assert sum(by_gateway.values()) == SCALE_JOBS
        assert_ledger_exact(books, dict.fromkeys(account_ids, GRANT))
        per_account = Counter(job.account_id for job in books.jobs.values())
        assert per_account == dict.fromkeys(account_ids, SCALE_JOBS // SCALE_ACCOUNTS)
        state = ledger_state(settings)
        assert (state.open_holds, state.unbalanced) == (0, [])


pytestmark = pytest.mark.timeout(180)
