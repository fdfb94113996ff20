"""Helpers for the worker network tests: tokens, ``infermesh worker`` processes, raw
WebSocket "workers", and log capture."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from infermesh.accounts.workers import CreatedWorkerToken, WorkerTokenService
from infermesh.catalog.spec import ModelSpec
from infermesh.catalog.store import default_models
from infermesh.config import Settings
from infermesh.protocol.models import Capabilities
from infermesh.protocol.wire import PROTOCOL_VERSION
from infermesh.store.database import Database
from tests.fakes.engine import ScriptedEngine
from tests.support.gateway import RunningGateway, create_key, start_gateway_on
from tests.support.processes import RunningProcess, infermesh_command
from tests.support.waiting import wait_until

# Fast enough for tests to see a silent worker die, slow enough that a stall of the test
# process (a garbage collection late in the suite) does not drop a healthy one.
HEARTBEAT = {"heartbeat_interval": 0.4, "heartbeat_misses": 5}
REGISTERED = re.compile(r"registered as node (\S+)")


def mesh_specs() -> list[ModelSpec]:
    """The catalog of the mesh gateways: the tiny model and models for remote workers."""
    scripted = {"tier": "frontier", "capabilities": Capabilities(tools=True, vision=False)}
    return [
        *default_models(),
        ModelSpec(id="scripted", **scripted),
        ModelSpec(id="slow", **scripted),
        ModelSpec(id="spread", **scripted),
        ModelSpec(id="raw", **scripted),
    ]


async def create_worker_token(settings: Settings, name: str) -> CreatedWorkerToken:
    database = Database.from_settings(settings)
    try:
        return await WorkerTokenService(database).create(name)
    finally:
        await database.dispose()


def worker_token(gateway: RunningGateway, name: str) -> CreatedWorkerToken:
    """A new worker token on ``gateway``'s database (call from synchronous code)."""
    return asyncio.run(create_worker_token(gateway.settings, name))


def revoke_worker(gateway: RunningGateway, worker_id: str) -> None:
    async def revoke() -> None:
        database = Database.from_settings(gateway.settings)
        try:
            await WorkerTokenService(database).revoke(worker_id)
        finally:
            await database.dispose()

    asyncio.run(revoke())


def openai_worker(engine: ScriptedEngine, *models: str, concurrency: int = 4) -> list[str]:
    """The options of a worker serving ``models`` on the scripted engine."""
    serve = [option for model in models for option in ("--serve", f"{model}=scripted-1")]
    return [
        "--backend", "openai", "--upstream-url", engine.base_url,
        *serve, "--concurrency", str(concurrency),
    ]  # fmt: skip


@dataclass
class WorkerProcess:
    """A running ``infermesh worker`` and the worker token it presented."""

    process: RunningProcess
    token: CreatedWorkerToken | None = None
    node_ids: list[str] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        if not self.node_ids:
            line = self.process.wait_for_line("registered as node", timeout=60)
            match = REGISTERED.search(line)
            assert match is not None, line
            self.node_ids.append(match.group(1))
        return self.node_ids[0]

    def wait_exit(self, *, timeout: float = 30) -> int:
        """The exit status, once the process has ended by itself."""
        return self.process.process.wait(timeout=timeout)


@contextmanager
def run_worker(
    gateway: RunningGateway | str,
    *options: str,
    token: CreatedWorkerToken | str | None = None,
    data_dir: Path,
    registered: bool = True,
) -> Iterator[WorkerProcess]:
    """Run ``infermesh worker`` against ``gateway`` (its token from the environment),
    waiting until it has registered unless ``registered`` is false."""
    base_url = gateway if isinstance(gateway, str) else gateway.base_url
    if token is None:
        assert not isinstance(gateway, str)
        token = worker_token(gateway, "test-worker")
    raw_token = token if isinstance(token, str) else token.token
    command = infermesh_command(
        "worker", "--gateway", base_url, "--data-dir", str(data_dir), *options
    )
    process = RunningProcess(command, env={"INFERMESH_WORKER_TOKEN": raw_token})
    worker = WorkerProcess(process, token if not isinstance(token, str) else None)
    try:
        if registered:
            assert worker.node_id
        yield worker
    finally:
        process.stop()


def health(gateway: RunningGateway) -> dict[str, Any]:
    with gateway.http() as http:
        body: dict[str, Any] = http.get("/health").json()
    return body


def model_available(gateway: RunningGateway, model: str) -> bool:
    """``available`` of ``model`` in ``/v1/models`` (and the same in ``/health``)."""
    with gateway.http() as http:
        listed = http.get("/v1/models", headers=gateway.auth()).json()["data"]
        in_health = http.get("/health").json()["models"]
    available = {entry["id"]: entry["available"] for entry in listed}
    assert {entry["id"]: entry["available"] for entry in in_health} == available
    return bool(available[model])


def connect_url(gateway: RunningGateway) -> str:
    return gateway.base_url.replace("http://", "ws://") + "/v1/workers/connect"


@asynccontextmanager
async def raw_worker(gateway: RunningGateway, token: str) -> AsyncIterator[ClientConnection]:
    """A bare WebSocket to the worker endpoint, presenting ``token``."""
    async with connect(
        connect_url(gateway),
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=None,
        ping_interval=None,
    ) as websocket:
        yield websocket


class LogCapture(logging.Handler):
    """Collects the messages logged under a logger, from any thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []
        self._lock_messages = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_messages:
            self.messages.append(record.getMessage())

    def wait_for(self, needle: str, *, timeout: float = 10) -> str:
        found: list[str] = []

        def logged() -> bool:
            with self._lock_messages:
                found.extend(message for message in self.messages if needle in message)
            return bool(found)

        wait_until(logged, timeout=timeout, what=f"a log line with {needle!r}: {self.messages}")
        return found[0]


@contextmanager
def capture_logs(name: str = "infermesh") -> Iterator[LogCapture]:
    logger = logging.getLogger(name)
    capture = LogCapture()
    previous = logger.level
    logger.addHandler(capture)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(previous)


JSON = dict[str, Any]


class RawWorker:
    """A hand-written worker: says hello, beats its heart, and sends what it is told."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.welcome: JSON = {}

    async def hello(self, model: str = "raw", *, concurrency: int = 2) -> JSON:
        hello = {
            "type": "hello",
            "protocol_version": PROTOCOL_VERSION,
            "worker_version": "raw",
            "models": [{"id": model, "concurrency": concurrency}],
        }
        await self.websocket.send(json.dumps(hello))
        self.welcome = json.loads(await self.websocket.recv())
        assert self.welcome["type"] == "welcome", self.welcome
        return self.welcome

    async def send(self, frame: JSON | str | bytes) -> None:
        await self.websocket.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def next_frame(self, kind: str, *, job_id: str | None = None) -> JSON:
        """The next frame of ``kind`` from the gateway (about ``job_id`` if given);
        the frames before it are passed over."""
        while True:
            frame: JSON = json.loads(await self.websocket.recv())
            if frame["type"] == kind and job_id in (None, frame.get("job_id")):
                return frame

    async def next_job(self) -> JSON:
        job: JSON = (await self.next_frame("job"))["job"]
        return job

    async def closed(self) -> tuple[int | None, str | None]:
        """The close code and reason, once the gateway has closed the connection."""
        with suppress(ConnectionClosed):
            while True:
                await self.websocket.recv()
        return self.websocket.close_code, self.websocket.close_reason

    async def heartbeat(self) -> None:
        with suppress(ConnectionClosed):
            while True:
                await self.send({"type": "heartbeat"})
                await asyncio.sleep(0.05)


@asynccontextmanager
async def connected(
    gateway: RunningGateway, name: str, *, model: str = "raw", concurrency: int = 2
) -> AsyncIterator[RawWorker]:
    """A raw worker, welcomed for ``model`` and beating its heart, for the block."""
    token = await create_worker_token(gateway.settings, name)
    async with raw_worker(gateway, token.token) as websocket:
        worker = RawWorker(websocket)
        await worker.hello(model, concurrency=concurrency)
        beating = asyncio.create_task(worker.heartbeat())
        try:
            yield worker
        finally:
            beating.cancel()


def priced_raw_model() -> ModelSpec:
    """ "raw", served only by raw workers: 1 micro-USD a prompt token, 2 a completion one."""
    pricing = {"input_per_million": "1", "output_per_million": "2"}
    spec = {"tier": "frontier", "context_length": 4096, "capabilities": {"tools": True}}
    return ModelSpec.model_validate({"id": "raw", **spec, "pricing": pricing})


@contextmanager
def raw_model_gateway(request: Any, data_dir: Path, **settings: Any) -> Iterator[RunningGateway]:
    """A gateway of :func:`priced_raw_model` on the database ``request.param`` names
    ("sqlite" or "postgres"), with no in-process worker and fast heartbeats."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    with start_gateway_on(
        request.param,
        data_dir,
        specs=[priced_raw_model()],
        embedded_worker=False,
        **{**HEARTBEAT, **settings},
    ) as gateway:
        yield gateway


async def own_key(gateway: RunningGateway) -> str:
    """A key of an account of its own (its limits and ledger are one test's alone)."""
    return await create_key(gateway.settings, f"acct-{uuid.uuid4().hex[:8]}")


def job_chunk(job: JSON, content: str) -> JSON:
    return {"type": "chunk", "job_id": job["id"], "chunk": {"content": content}}


def job_done(job: JSON, *, prompt: int, completion: int, total: int | None = None) -> JSON:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion if total is None else total,
    }
    return {"type": "done", "job_id": job["id"], "finish_reason": "stop", "usage": usage}
