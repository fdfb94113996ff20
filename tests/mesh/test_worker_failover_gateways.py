"""A worker that knows two gateways moves to the second when the first dies.

Two real ``infermesh serve`` processes, each on its own SQLite file copied from one
prepared database (so that one worker token and one API key work on both), and a real
``infermesh worker --gateway A --gateway B`` on the scripted engine. Gateway A is
SIGKILLed (the kernel closes its sockets: the worker hears of it at once) or SIGSTOPped
(its connections stay open and silent: the worker's heartbeat notices); the worker is
registered on B within a deadline, and a chat completion through B is served by it.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from infermesh.accounts.workers import CreatedWorkerToken
from infermesh.catalog.store import CatalogFile
from infermesh.config import Settings
from tests.fakes.engine import ScriptedEngine
from tests.mesh.helpers import create_worker_token, mesh_specs, openai_worker
from tests.support.gateway import create_key
from tests.support.processes import RunningProcess, infermesh_command
from tests.support.servers import free_port
from tests.support.waiting import wait_until

MODEL = "scripted"
FAST_HEARTBEAT = 0.5  # the SIGSTOP case: a silent gateway is left after 3 of them


@dataclass
class GatewayProcess:
    """An ``infermesh serve`` process (no in-process worker) on ``base_url``."""

    process: RunningProcess
    base_url: str

    @property
    def worker_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/v1/workers/connect"

    def answers(self) -> bool:
        try:
            with httpx.Client(base_url=self.base_url, timeout=5) as http:
                return http.get("/health").status_code == 200
        except httpx.TransportError:  # not listening yet
            return False

    def serves(self, model: str) -> bool:
        with httpx.Client(base_url=self.base_url, timeout=5) as http:
            models = http.get("/health").json()["models"]
        return any(entry["id"] == model and entry["available"] for entry in models)


@contextmanager
def serve_gateway(data_dir: Path, catalog: Path, env: dict[str, str]) -> Iterator[GatewayProcess]:
    port = free_port()
    command = infermesh_command(
        "serve", "--data-dir", str(data_dir), "--config", str(catalog),
        "--port", str(port), "--no-worker",
    )  # fmt: skip
    process = RunningProcess(command, env=env)
    try:
        yield GatewayProcess(process, f"http://127.0.0.1:{port}")
    finally:
        if process.process.poll() is None:
            process.process.send_signal(signal.SIGCONT)  # a stopped one cannot drain
        process.stop()


@dataclass(frozen=True)
class Network:
    """The data directories of two gateways whose databases start as copies of one."""

    dirs: tuple[Path, Path]
    catalog: Path
    key: str
    token: CreatedWorkerToken


def prepare_network(root: Path) -> Network:
    first, second = root / "a", root / "b"
    settings = Settings(data_dir=first)
    key = asyncio.run(create_key(settings))
    token = asyncio.run(create_worker_token(settings, "roamer"))
    second.mkdir()
    for path in first.glob("infermesh.db*"):
        shutil.copyfile(path, second / path.name)
    catalog = root / "models.toml"
    CatalogFile(catalog).save(mesh_specs())
    return Network((first, second), catalog, key, token)


# A SIGKILLed gateway (its worker moves at once) is tested with the whole network under
# load in tests/mesh/test_network.py; here, the gateway that freezes with its
# connections open, which only the worker's heartbeat can notice.
@pytest.mark.parametrize(
    ("death", "heartbeat", "deadline"),
    [(signal.SIGSTOP, FAST_HEARTBEAT, 3 * FAST_HEARTBEAT + 5.0)],
    ids=["stopped"],
)
def test_a_worker_moves_to_its_second_gateway_when_the_first_dies(
    tmp_path: Path,
    engine: ScriptedEngine,
    worker_dir: Path,
    death: signal.Signals,
    heartbeat: float | None,
    deadline: float,
) -> None:
    network = prepare_network(tmp_path)
    env = {"INFERMESH_HEARTBEAT_INTERVAL": str(heartbeat)} if heartbeat else {}
    with ExitStack() as stack:
        first, second = (
            stack.enter_context(serve_gateway(data_dir, network.catalog, env))
            for data_dir in network.dirs
        )
        for gateway in (first, second):
            wait_until(gateway.answers, timeout=90, what=f"{gateway.base_url} started")
        command = infermesh_command(
            "worker", "--gateway", first.base_url, "--gateway", second.base_url,
            "--data-dir", str(worker_dir), *openai_worker(engine, MODEL),
        )  # fmt: skip
        worker = RunningProcess(command, env={"INFERMESH_WORKER_TOKEN": network.token.token})
        stack.callback(worker.stop)
        worker.wait_for_line(f"on {first.worker_url}", timeout=90)
        wait_until(lambda: first.serves(MODEL), what="the worker on the first gateway")
        assert not second.serves(MODEL)  # connected to one gateway at a time

        killed_at = time.monotonic()
        first.process.process.send_signal(death)
        wait_until(lambda: second.serves(MODEL), timeout=deadline, what="the worker on the second")
        moved_in = time.monotonic() - killed_at
        print(f"registered on the second gateway {moved_in:.3f}s after {death.name}")

        worker.wait_for_line(f"on {second.worker_url}")
        assert f"gateway {first.worker_url}: " in worker.output
        assert "trying the next one now" in worker.output
        client = OpenAI(base_url=f"{second.base_url}/v1", api_key=network.key, max_retries=0)
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "still here"}]
        )
        assert response.choices[0].message.content == "echo: still here"
        assert response.metadata == {"node_id": network.token.record.id}
