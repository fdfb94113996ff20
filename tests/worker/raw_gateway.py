"""A hand-written gateway for the worker agent's tests: it welcomes a worker with the
protocol version it is told to speak (or refuses versions it does not know, as a
gateway of an older release does), sends jobs, and records every frame it gets back
with the time it arrived.

The worker agent and its engine are the real ones; only the gateway side is written by
hand, as the raw workers of ``tests/mesh`` are for the gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from infermesh.catalog.spec import ModelSpec
from infermesh.worker.agent import AgentConfig, LoggingObserver, WorkerAgent, serve_spec
from infermesh.worker.host import HostOptions, ModelHost
from tests.fakes.engine import ScriptedEngine
from tests.support.servers import free_port

JSON = dict[str, Any]


@dataclass
class Received:
    """A frame from the worker (each frame of a batch on its own) and when it came."""

    frame: JSON
    at: float
    batched: bool


@dataclass
class RawGateway:
    """See the module doc. ``version`` goes in the welcome (None: left out, as a gateway
    of version 1 does); ``speaks`` are the hello versions accepted (others refused)."""

    version: int | None = 2
    speaks: tuple[int, ...] | None = None
    url: str = ""
    hellos: list[JSON] = field(default_factory=list)
    extensions: list[str | None] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    messages: int = 0
    _connection: asyncio.Future[ServerConnection] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _first_of: dict[tuple[str, str | None], Received] = field(default_factory=dict)

    async def connection(self) -> ServerConnection:
        assert self._connection is not None
        return await asyncio.wait_for(asyncio.shield(self._connection), timeout=60)

    async def send_job(
        self, job_id: str, text: str, *, model: str = "m", stream: bool | None = None
    ) -> float:
        """Send a job (of a request with ``stream`` set, if given); return the time it
        was sent."""
        request: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
        if stream is not None:
            request["stream"] = stream
        frame = {"type": "job", "job": {"id": job_id, "model": model, "request": request}}
        websocket = await self.connection()
        sent = time.perf_counter()
        await websocket.send(json.dumps(frame))
        return sent

    async def frame(self, kind: str, job_id: str) -> Received:
        """The first frame of ``kind`` for ``job_id``, once it has come (within 30 s)."""
        try:
            async with asyncio.timeout(30):
                return await self._first(kind, job_id)
        except TimeoutError:
            raise AssertionError(f"no {kind} frame for {job_id}: {self.received}") from None

    async def _first(self, kind: str, job_id: str) -> Received:
        while (kind, job_id) not in self._first_of:
            self._arrived.clear()
            await self._arrived.wait()
        return self._first_of[kind, job_id]

    async def _handle(self, websocket: ServerConnection) -> None:
        assert websocket.request is not None
        self.extensions.append(websocket.request.headers.get("Sec-WebSocket-Extensions"))
        hello = json.loads(await websocket.recv())
        self.hellos.append(hello)
        if self.speaks is not None and hello["protocol_version"] not in self.speaks:
            refused = {"type": "refused", "code": "unsupported_protocol", "reason": "old"}
            await websocket.send(json.dumps(refused))
            await websocket.close(1008, "old")
            return
        accepted = [model["id"] for model in hello["models"]]
        welcome: JSON = {"type": "welcome", "node_id": "n", "heartbeat_interval": 30.0}
        welcome["accepted"] = accepted
        if self.version is not None:
            welcome["protocol_version"] = self.version
        await websocket.send(json.dumps(welcome))
        assert self._connection is not None
        self._connection.set_result(websocket)
        async for message in websocket:
            self._record(message)

    def _record(self, message: str | bytes) -> None:
        at = time.perf_counter()
        self.messages += 1
        frame: JSON = json.loads(message)
        frames = frame["frames"] if frame["type"] == "batch" else [frame]
        batched = frame["type"] == "batch"
        for part in frames:
            received = Received(part, at, batched)
            self.received.append(received)
            self._first_of.setdefault((part["type"], part.get("job_id")), received)
        self._arrived.set()


@asynccontextmanager
async def raw_gateway(**options: Any) -> AsyncIterator[RawGateway]:
    gateway = RawGateway(**options)
    gateway._connection = asyncio.get_running_loop().create_future()
    port = free_port()
    async with serve(gateway._handle, "127.0.0.1", port, compression=None, max_size=None):
        gateway.url = f"ws://127.0.0.1:{port}/v1/workers/connect"
        yield gateway


def engine_spec(engine: ScriptedEngine, model: str = "m") -> ModelSpec:
    return serve_spec(f"{model}=scripted-1", backend="openai", upstream_url=engine.base_url)


@asynccontextmanager
async def running_agent(
    gateway: RawGateway, engine: ScriptedEngine, models_dir: Any, *, concurrency: int = 4
) -> AsyncIterator[WorkerAgent]:
    """A real worker agent serving ``m`` on ``engine``, connected to ``gateway``."""
    host = ModelHost([engine_spec(engine)], HostOptions(models_dir=models_dir))
    config = AgentConfig(url=gateway.url, token="t", models={"m": concurrency})
    async with agent_of(gateway, config, host) as agent:
        yield agent


@asynccontextmanager
async def agent_of(
    gateway: RawGateway, config: AgentConfig, host: ModelHost
) -> AsyncIterator[WorkerAgent]:
    """A real worker agent of ``config`` on ``host``, connected to ``gateway``; drained
    and finished at the end of the block."""
    agent = WorkerAgent(config, host, LoggingObserver())
    running = asyncio.create_task(agent.run())
    try:
        await gateway.connection()
        yield agent
    finally:
        agent.drain()
        agent.drain()
        await asyncio.wait_for(running, timeout=30)
