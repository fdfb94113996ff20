"""A worker that knows several gateways: the order it dials them in, that it moves on at
once when one is lost or fails, and that it backs off only after a whole round failed.

The agent is the real one; the gateways are closed ports, or hand-written WebSocket
servers that welcome every worker (the real gateways, in processes, are in
``tests/mesh/test_worker_failover_gateways.py``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from typer.testing import CliRunner
from websockets.asyncio.server import Server, ServerConnection, serve

from infermesh.cli import app
from infermesh.protocol.wire import Welcome
from infermesh.worker.agent import EXIT_OK, EXIT_REFUSED, AgentConfig, JobCounts, WorkerAgent
from infermesh.worker.agent.gateways import GatewayEndpoint, GatewayRotation
from infermesh.worker.host import HostOptions, ModelHost
from tests.support.servers import free_port

PATH = "/v1/workers/connect"


@dataclass
class Recorder:
    """An agent observer that keeps what it is told, and wakes who waits for it."""

    dialed: list[str] = field(default_factory=list)
    registered_on: list[str] = field(default_factory=list)
    left: list[tuple[str, float | None]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(20):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def starting(self, models: list[str]) -> None:
        pass

    def connecting(self, gateway: str) -> None:
        self.dialed.append(gateway)
        self._changed.set()

    def registered(self, welcome: Welcome, *, gateway: str) -> None:
        self.registered_on.append(gateway)
        self._changed.set()

    def refused(self, code: str, reason: str, *, fatal: bool) -> None:
        pass

    def disconnected(self, reason: str, *, gateway: str, retry_in: float | None) -> None:
        self.left.append((gateway, retry_in))
        self._changed.set()

    def jobs_changed(self, counts: JobCounts) -> None:
        pass

    def draining(self, in_flight: int) -> None:
        pass

    def stopped(self, reason: str) -> None:
        pass


@asynccontextmanager
async def running_agent(urls: list[str], tmp_path: Path) -> AsyncIterator[Recorder]:
    """A real agent dialing ``urls`` (backoff of a few milliseconds) until the block ends."""
    config = AgentConfig(
        url=urls[0],
        other_urls=tuple(urls[1:]),
        token="t",
        models={"m": 1},
        backoff_initial=0.01,
        backoff_max=0.02,
    )
    recorder = Recorder()
    agent = WorkerAgent(config, ModelHost([], HostOptions(models_dir=tmp_path)), recorder)
    running = asyncio.create_task(agent.run())
    try:
        yield recorder
    finally:
        agent.drain()
        agent.drain()
        assert await asyncio.wait_for(running, timeout=30) == EXIT_OK


@dataclass
class FakeGateway:
    """A WebSocket server that welcomes every worker and records the Host it was asked for."""

    port: int
    hosts: list[str] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)
    server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PATH}"

    def cut(self) -> None:
        """Drop the worker's connection without a word, as a network cut does."""
        self.connections[-1].transport.abort()

    def kill(self) -> None:
        """Stop listening and drop every connection, as a gateway that dies."""
        assert self.server is not None
        self.server.close(close_connections=False)
        for connection in self.connections:
            connection.transport.abort()

    async def _handle(self, websocket: ServerConnection) -> None:
        assert websocket.request is not None
        self.hosts.append(websocket.request.headers["Host"])
        self.connections.append(websocket)
        hello = json.loads(await websocket.recv())
        welcome = {
            "type": "welcome",
            "node_id": "n",
            "heartbeat_interval": 30.0,
            "accepted": [model["id"] for model in hello["models"]],
            "protocol_version": hello["protocol_version"],
        }
        await websocket.send(json.dumps(welcome))
        await websocket.wait_closed()


@asynccontextmanager
async def fake_gateway() -> AsyncIterator[FakeGateway]:
    gateway = FakeGateway(free_port())
    async with serve(gateway._handle, "127.0.0.1", gateway.port, compression=None) as server:
        gateway.server = server
        yield gateway


def closed_port_url() -> str:
    return f"ws://127.0.0.1:{free_port()}{PATH}"


async def test_gateways_that_refuse_are_dialed_in_turn_with_a_wait_only_after_each_round(
    tmp_path: Path,
) -> None:
    urls = [closed_port_url() for _ in range(3)]
    async with running_agent(urls, tmp_path) as recorder:
        await recorder.wait_for(lambda: len(recorder.dialed) >= 7)
    assert recorder.dialed[:7] == [*urls, *urls, urls[0]]
    waits = [retry_in for _, retry_in in recorder.left[:6]]
    assert waits[0] is None and waits[1] is None and waits[3] is None and waits[4] is None
    assert waits[2] is not None and waits[5] is not None, waits


async def test_a_lost_gateway_is_left_for_the_next_one_at_once_round_robin(
    tmp_path: Path,
) -> None:
    async with (
        fake_gateway() as first,
        fake_gateway() as second,
        running_agent([first.url, second.url], tmp_path) as recorder,
    ):
        await recorder.wait_for(lambda: len(recorder.registered_on) == 1)
        first.cut()  # the first gateway still listens: it is not dialed again first
        await recorder.wait_for(lambda: len(recorder.registered_on) == 2)
        second.cut()
        await recorder.wait_for(lambda: len(recorder.registered_on) == 3)
        first.kill()
        second.kill()
        await recorder.wait_for(lambda: len(recorder.left) >= 5)
    assert recorder.registered_on == [first.url, second.url, first.url]
    assert recorder.dialed[:3] == [first.url, second.url, first.url]
    # Each loss moves on at once; the wait comes when both are down, after one round.
    left = [gateway for gateway, _ in recorder.left[:4]]
    waits = [retry_in for _, retry_in in recorder.left[:4]]
    assert left == [first.url, second.url, first.url, second.url]
    assert waits[:3] == [None, None, None] and waits[3] is not None


async def test_a_host_name_is_dialed_at_its_addresses_and_kept_in_the_host_header(
    tmp_path: Path,
) -> None:
    async with fake_gateway() as gateway:
        url = f"ws://localhost:{gateway.port}{PATH}"
        async with running_agent([url], tmp_path) as recorder:
            await recorder.wait_for(lambda: bool(recorder.registered_on))
    assert gateway.hosts == [f"localhost:{gateway.port}"]
    assert recorder.registered_on == [f"{url} (127.0.0.1)"]


async def test_a_name_with_several_addresses_counts_as_several_gateways() -> None:
    answers = {"gw.test": [["10.0.0.1", "10.0.0.2"], ["10.0.0.3"]]}
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answers[host].pop(0)

    named, literal = "wss://gw.test/v1/workers/connect", f"ws://10.9.9.9:8000{PATH}"
    rotation = GatewayRotation([named, literal], resolve=resolve)
    dialed = [await rotation.next() for _ in range(3)]
    assert dialed == [
        GatewayEndpoint(named, "10.0.0.1"),
        GatewayEndpoint(named, "10.0.0.2"),
        GatewayEndpoint(literal),
    ]
    assert rotation.size == 3
    again = await rotation.next()  # a new round: the name is resolved again
    assert again == GatewayEndpoint(named, "10.0.0.3")
    assert asked == [("gw.test", 443), ("gw.test", 443)]
    assert rotation.size == 2
    rotation.again(again)
    assert await rotation.next() == again
    assert await rotation.next() == GatewayEndpoint(literal)


def test_the_gateway_option_is_repeatable_and_the_environment_lists_several(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    common = ["worker", "--serve", "m", "--token", "t", "--data-dir", str(tmp_path)]
    repeated = runner.invoke(
        app, [*common, "--gateway", "http://127.0.0.1:1", "--gateway", "ftp://second"]
    )
    assert repeated.exit_code == EXIT_REFUSED and "ftp://second" in repeated.output
    listed = runner.invoke(
        app, common, env={"INFERMESH_GATEWAY": "http://127.0.0.1:1 ftp://listed"}
    )
    assert listed.exit_code == EXIT_REFUSED and "ftp://listed" in listed.output
