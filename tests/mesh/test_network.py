"""Many gateways, one network: three ``infermesh serve`` processes on one PostgreSQL and
one Redis, with the network's shared secret, and worker processes connected to
different gateways. Every model is served from every gateway (a job forwarded to the
gateway that holds the worker, its stream relayed back intact), billed once; a gateway
restarted leaves the others' workers online; a gateway that loses Redis serves its own
workers only."""

from __future__ import annotations

import asyncio
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from infermesh.accounts.service import AccountService
from infermesh.accounts.workers import WorkerTokenService
from infermesh.billing.ledger import CreditLedger
from infermesh.billing.pricing import Pricing
from infermesh.catalog.spec import ModelSpec
from infermesh.catalog.store import CatalogFile
from infermesh.config import Settings
from infermesh.store.database import Database
from tests.fakes.engine import ScriptedEngine, embedding_of, run_engine
from tests.mesh.helpers import WorkerProcess, create_worker_token, openai_worker, run_worker
from tests.support.postgres import postgres_database, require_postgres
from tests.support.processes import RunningProcess, infermesh_command
from tests.support.redis import redis_url, require_redis, unique_prefix
from tests.support.servers import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgres

MODELS = ["net-a", "net-b"]
EMBEDDER = "net-embed"
"""An embedding model, served by gateway a's worker next to net-a."""
GRANT = 100_000_000


@dataclass
class Gateway:
    """One ``infermesh serve`` process and where it listens."""

    name: str
    process: RunningProcess
    base_url: str

    def wait_ready(self) -> None:
        self.process.wait_for_line(f"{self.base_url}/v1", timeout=90)

    def client(self, key: str) -> OpenAI:
        return OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=60)

    def models(self) -> dict[str, bool]:
        """Each model and whether it is available here ({} while the server starts)."""
        try:
            response = httpx.get(f"{self.base_url}/v1/models", timeout=10)
        except httpx.TransportError:
            return {}
        return {m["id"]: m["available"] for m in response.json()["data"]}


@dataclass
class Network:
    """The shared database, Redis prefix and secret, the gateways and the workers."""

    root: Path
    env: dict[str, str]
    settings: Settings
    engine: ScriptedEngine
    gateways: dict[str, Gateway] = field(default_factory=dict)
    workers: dict[str, WorkerProcess] = field(default_factory=dict)

    @contextmanager
    def gateway(self, name: str, *, ready: bool = True) -> Iterator[Gateway]:
        """``infermesh serve`` until the block ends; listening, unless not ``ready``
        (then call :meth:`Gateway.wait_ready`: several start at once)."""
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        command = infermesh_command(
            "serve", "--no-worker", "--data-dir", str(self.root / name),
            "--config", str(self.root / "models.toml"), "--port", str(port),
        )  # fmt: skip
        process = RunningProcess(command, env={**self.env, "INFERMESH_PEER_URL": base_url})
        gateway = Gateway(name, process, base_url)
        try:
            if ready:
                gateway.wait_ready()
            yield gateway
        finally:
            process.stop()

    def key(self, account: str) -> str:
        """A key of a new account with credit."""

        async def create() -> str:
            database = Database.from_settings(self.settings)
            try:
                created = await AccountService(database).create_key(account, tier="pro")
                await CreditLedger(database).credit(
                    created.record.account_id, GRANT, kind="grant", reference=account, reason=None
                )
            finally:
                await database.dispose()
            return created.key

        return asyncio.run(create())


def catalog() -> list[ModelSpec]:
    price = Pricing(per_request=0.001, input_per_million=10, output_per_million=20)
    embedder = ModelSpec(
        id=EMBEDDER, kind="embedding", dimensions=16, context_length=512, pricing=price
    )
    return [
        *(ModelSpec(id=model, tier="fast", context_length=4096, pricing=price) for model in MODELS),
        embedder,
    ]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    require_postgres()
    require_redis()
    root = tmp_path_factory.mktemp("network")
    CatalogFile(root / "models.toml").save(catalog())
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_database())
        engine = stack.enter_context(
            run_engine(models=["scripted-1", "embed-1"], chunk_delay=0.01, embedding_dimensions=16)
        )
        env = {
            "INFERMESH_DATABASE_URL": database_url,
            "INFERMESH_REDIS_URL": redis_url(),
            "INFERMESH_REDIS_PREFIX": unique_prefix(),
            "INFERMESH_PEER_SECRET": secrets.token_urlsafe(24),
            "INFERMESH_PRESENCE_INTERVAL": "0.3",
            "INFERMESH_PRESENCE_TTL": "2",
            "INFERMESH_HEARTBEAT_INTERVAL": "0.5",
        }
        net = Network(root, env, Settings(data_dir=root, database_url=database_url), engine)
        for name in ("a", "b", "c"):  # started together
            net.gateways[name] = stack.enter_context(net.gateway(name, ready=False))
        for gateway in net.gateways.values():
            gateway.wait_ready()
        for name, model in (("a", "net-a"), ("b", "net-b")):
            token = asyncio.run(create_worker_token(net.settings, f"rig-{name}"))
            embeds = ["--embed", f"{EMBEDDER}=embed-1"] if name == "a" else []
            net.workers[name] = stack.enter_context(
                run_worker(
                    net.gateways[name].base_url,
                    *openai_worker(engine, model, concurrency=4),
                    *embeds,
                    token=token,
                    data_dir=root / f"worker-{name}",
                )
            )
        for gateway in net.gateways.values():
            wait_until(
                lambda g=gateway: all(g.models().get(model) for model in [*MODELS, EMBEDDER]),
                timeout=30,
                what=f"every model available on gateway {gateway.name}",
            )
        yield net


def ask(gateway: Gateway, key: str, model: str, text: str, *, stream: bool) -> tuple[str, str]:
    """The answer's text and the node that served it."""
    client = gateway.client(key)
    messages: Any = [{"role": "user", "content": text}]
    if not stream:
        response = client.chat.completions.create(model=model, messages=messages)
        assert response.metadata is not None
        return response.choices[0].message.content or "", response.metadata["node_id"]
    parts, node = [], ""
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        node = (getattr(chunk, "metadata", None) or {}).get("node_id", node)
    return "".join(parts), node


def balance(gateway: Gateway, key: str) -> int:
    response = httpx.get(
        f"{gateway.base_url}/v1/credits/balance",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    micro: int = response.json()["balance"]["micro_usd"]
    return micro


def usage_records(gateway: Gateway, key: str, limit: int | None = 100) -> list[dict[str, Any]]:
    """The account's usage records (every page when ``limit`` is None)."""
    records: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = httpx.get(
            f"{gateway.base_url}/v1/usage",
            params=params,
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        body = response.json()
        records += body["data"]
        if limit is not None or not body.get("has_more"):
            return records
        params["after"] = body["data"][-1]["id"]


def test_every_gateway_serves_every_model_and_bills_once(network: Network) -> None:
    key = network.key("everywhere")
    nodes = {name: worker.node_id for name, worker in network.workers.items()}
    asked = 0
    for gateway in network.gateways.values():
        for model, holder in (("net-a", "a"), ("net-b", "b")):
            for stream in (False, True):
                text = f"from {gateway.name} to {model} {'streamed' if stream else 'whole'}"
                answer, node = ask(gateway, key, model, text, stream=stream)
                assert answer == f"echo: {text}"  # relayed intact, whichever gateway holds it
                if not stream:
                    assert node == nodes[holder]
                asked += 1

    def settled() -> bool:
        return len(usage_records(network.gateways["c"], key)) == asked

    wait_until(settled, timeout=30, what="every request recorded once")
    records = usage_records(network.gateways["a"], key)
    assert {record["status"] for record in records} == {"succeeded"}
    spent = sum(record["cost"]["micro_usd"] for record in records)
    assert spent > 0
    wait_until(lambda: balance(network.gateways["b"], key) == GRANT - spent, timeout=30)


def test_embeddings_are_forwarded_to_the_gateway_that_holds_their_worker(
    network: Network,
) -> None:
    key = network.key("vectors")
    node = network.workers["a"].node_id
    texts = ["one fish", "two fish"]
    for gateway in network.gateways.values():  # a holds the worker; b and c forward to it
        answer = gateway.client(key).embeddings.create(model=EMBEDDER, input=texts)
        assert [item.embedding for item in answer.data] == [
            embedding_of(text, 16, 16) for text in texts
        ]
        assert answer.usage.prompt_tokens == 4
    wait_until(lambda: len(usage_records(network.gateways["b"], key)) == 3, timeout=30)
    records = usage_records(network.gateways["b"], key)
    assert {(r["endpoint"], r["node_id"], r["status"]) for r in records} == {
        ("embeddings", node, "succeeded")
    }


def test_a_restarted_gateway_leaves_the_other_workers_online(network: Network) -> None:
    async def online() -> set[str]:
        database = Database.from_settings(network.settings)
        try:
            return {r.name for r in await WorkerTokenService(database).list() if r.online}
        finally:
            await database.dispose()

    assert asyncio.run(online()) >= {"rig-a", "rig-b"}
    with network.gateway("d") as late:  # a gateway that starts now
        wait_until(lambda: all(late.models().get(m) for m in MODELS), timeout=30)
        assert asyncio.run(online()) >= {"rig-a", "rig-b"}
        key = network.key("late")
        answer, _ = ask(late, key, "net-a", "through the newcomer", stream=True)
        assert answer == "echo: through the newcomer"


def test_the_internal_routes_need_the_network_secret(network: Network) -> None:
    gateway = network.gateways["a"]
    body = {"node_id": network.workers["a"].node_id, "max_output_tokens": 5, "job": {}}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.post(
            f"{gateway.base_url}/internal/v1/generate", json=body, headers=headers, timeout=10
        )
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    user_key = network.key("nosy")
    response = httpx.post(
        f"{gateway.base_url}/internal/v1/generate",
        json=body,
        headers={"Authorization": f"Bearer {user_key}"},
        timeout=10,
    )
    assert response.status_code == 401


def test_a_gateway_killed_under_load_loses_no_request_and_charges_none_twice(
    network: Network,
) -> None:
    """A fourth gateway holds a worker of net-a (that also knows gateway b) beside the
    one on a; requests at b and c run while the fourth is SIGKILLed: its worker moves to
    b within seconds, every request succeeds, each is billed once."""
    key = network.key("under-load")
    with ExitStack() as stack:
        doomed = stack.enter_context(network.gateway("doomed"))
        token = asyncio.run(create_worker_token(network.settings, "rig-moving"))
        moving = stack.enter_context(
            run_worker(
                doomed.base_url,
                "--gateway", network.gateways["b"].base_url,
                *openai_worker(network.engine, "net-a", concurrency=4),
                token=token,
                data_dir=network.root / "worker-moving",
            )
        )  # fmt: skip
        surviving = [network.gateways["b"], network.gateways["c"]]
        wait_until(
            lambda: all(_holds(g, moving.node_id) for g in surviving),
            timeout=30,
            what="the moving worker seen from b and c",
        )
        stop = threading.Event()
        answers: list[str] = []
        failures: list[BaseException] = []

        def load(index: int) -> None:
            gateway = surviving[index % 2]
            n = 0
            while not stop.is_set():
                text = f"load {index}-{n}"
                try:
                    answer, _ = ask(gateway, key, "net-a", text, stream=False)
                    assert answer == f"echo: {text}"
                    answers.append(answer)
                except BaseException as exc:  # recorded, asserted below
                    failures.append(exc)
                n += 1

        with ThreadPoolExecutor(max_workers=4) as pool:
            running = [pool.submit(load, index) for index in range(4)]
            wait_until(lambda: len(answers) >= 20, timeout=60, what="load running")
            killed_at = time.monotonic()
            doomed.process.process.send_signal(signal.SIGKILL)
            wait_until(
                lambda: _holds(network.gateways["b"], token.record.id, here=True),
                timeout=10,
                what="the worker registered on b",
            )
            moved_after = time.monotonic() - killed_at
            served_before = len(answers)
            wait_until(lambda: len(answers) >= served_before + 20, timeout=60, what="more load")
            stop.set()
            for future in running:
                future.result(timeout=60)
    assert failures == [], failures[:3]
    assert moved_after < 10
    expected = len(answers)

    def recorded() -> int:
        return len(usage_records(network.gateways["c"], key, limit=None))

    wait_until(lambda: recorded() == expected, timeout=30, what="each request recorded once")
    spent = sum(r["cost"]["micro_usd"] for r in usage_records(network.gateways["b"], key, None))
    wait_until(lambda: balance(network.gateways["c"], key) == GRANT - spent, timeout=30)


def _holds(gateway: Gateway, node: str, *, here: bool = False) -> bool:
    """Whether the gateway's registry has the worker ``node`` (a prefix of its node id,
    connected to it if ``here``)."""
    try:
        workers = httpx.get(f"{gateway.base_url}/health", timeout=10).json()["workers"]
    except httpx.TransportError:
        return False
    return any(
        w["node_id"].startswith(node) and (not here or w["gateway"] is None) for w in workers
    )


def test_without_redis_a_gateway_serves_its_own_workers_only(tmp_path: Path) -> None:
    """Redis goes away: each gateway forgets the others' workers (a request for one of
    them is a clear 503, not a hang) and keeps serving its own (limits set to fail
    open here; by default they fail closed, as README says); Redis back, the network
    is whole again."""
    from infermesh.catalog.spec import ModelSpec as Spec
    from tests.mesh.helpers import HEARTBEAT
    from tests.support.gateway import start_gateway
    from tests.support.redis import private_redis

    with ExitStack() as stack:
        server = stack.enter_context(private_redis())
        database_url = stack.enter_context(postgres_database())
        engine = stack.enter_context(run_engine(models=["scripted-1"]))
        shared: dict[str, Any] = {
            "specs": [Spec(id=model, tier="fast") for model in MODELS],
            "embedded_worker": False,
            "database_url": database_url,
            "redis_url": server.url,
            "redis_prefix": unique_prefix(),
            "peer_secret": secrets.token_urlsafe(24),
            "presence_interval": 0.2,
            "presence_ttl": 1.0,
            "rate_limit_fail_open": True,
            **HEARTBEAT,
        }
        gateways = []
        for name in ("a", "b"):
            port = free_port()
            gateways.append(
                stack.enter_context(
                    start_gateway(
                        tmp_path / name, port=port, peer_url=f"http://127.0.0.1:{port}", **shared
                    )
                )
            )
        first, second = gateways
        token = asyncio.run(create_worker_token(first.settings, "rig"))
        stack.enter_context(
            run_worker(
                first.base_url,
                *openai_worker(engine, "net-a"),
                token=token,
                data_dir=tmp_path / "worker",
            )
        )

        def available(gateway: Any) -> bool:
            body = httpx.get(f"{gateway.base_url}/v1/models", timeout=10).json()
            return {m["id"]: m["available"] for m in body["data"]}["net-a"]

        wait_until(lambda: available(second), timeout=30, what="net-a seen from b")
        server.stop()
        wait_until(lambda: not available(second), timeout=30, what="b forgets a's worker")
        refused = httpx.post(
            f"{second.base_url}/v1/chat/completions",
            json={"model": "net-a", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {second.key}"},
            timeout=30,
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "no_worker_available"
        answer = first.client().chat.completions.create(
            model="net-a", messages=[{"role": "user", "content": "still here"}]
        )
        assert answer.choices[0].message.content == "echo: still here"

        server.start()
        wait_until(lambda: available(second), timeout=60, what="b sees a's worker again")
        again = second.client().chat.completions.create(
            model="net-a", messages=[{"role": "user", "content": "whole again"}]
        )
        assert again.choices[0].message.content == "echo: whole again"
