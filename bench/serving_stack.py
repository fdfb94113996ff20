"""The processes bench/serving.py measures: the fake engine, infermesh (gateway and a
remote worker) and LiteLLM, each started pinned to CPUs and stopped on exit.

infermesh is set up through its own command line (``python -m infermesh``, so that
PYTHONPATH picks the code under test): a priced catalog, an account key with credit,
high (but enforced) rate limits for its tier, and a worker token.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
FAST_MODEL = "bench"
SLOW_MODEL = "bench-slow"
EMBED_MODEL = "bench-embed"
EMBED_DIMENSIONS = 768
"""The embedding model (bench/endpoints.py): the fake engine's vectors are this long."""
PRICES = {"input_per_million": "0.20", "output_per_million": "0.60"}
HIGH_LIMITS = ["--rpm", "1000000000", "--tpm", "1000000000000", "--tpd", "1000000000000"]
WORKER_SLOTS = 1100
"""Job slots the worker announces per model: room for the 1,000 open streams."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpus: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *command]


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def http_post(port: int, path: str, body: bytes, key: str) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class Processes:
    """Every process the benchmark started, each in a session of its own; ``stop_all``
    ends them (SIGTERM to the process group, then SIGKILL)."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, command: list[str], *, log: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process in self.started:
            self.started.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.started)):
            self.stop(process)

    def stop_all_but(self, pid: int) -> None:
        """Stop every process but the one with ``pid`` (the engine, shared by all runs)."""
        for process in reversed(list(self.started)):
            if process.pid != pid:
                self.stop(process)


def wait_until(
    check: object, *, what: str, timeout: float, process: subprocess.Popen[bytes], log: Path
) -> None:
    """Poll ``check()`` until it is true; fail with the log's tail if ``process`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{tail(log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{tail(log)}")


def complaints(log: Path, top: int = 12) -> list[tuple[str, int]]:
    """The WARNING and ERROR lines of ``log``, ids and numbers blanked, most common first."""
    if not log.exists():
        return []
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if " WARNING " not in line and " ERROR " not in line:
            continue
        message = re.sub(r"\b(req|chatcmpl|wrk|key|slice)[-_][0-9a-f-]+", r"\1_…", line[24:])
        message = re.sub(r"\d+(\.\d+)?", "N", message)[:160]
        counts[message] = counts.get(message, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])[:top]


def first_error(log: Path, lines: int = 40) -> str:
    """The first ERROR line of ``log`` and the lines after it (its traceback)."""
    text = log.read_text(errors="replace").splitlines()
    for index, line in enumerate(text):
        if " ERROR " in line:
            return "\n".join(text[index : index + lines])
    return ""


def report_complaints(data_dir: Path, *, label: str = "") -> None:
    """Print, to stderr, the warnings and errors the gateway's and the worker's logs in
    ``data_dir`` hold (counted), and the first error in full."""
    prefix = f"{label} " if label else ""
    for log in ("gateway.log", "worker.log"):
        found = complaints(data_dir / log)
        if found:
            print(f"{prefix}{log}: warnings and errors:", file=sys.stderr)
            for line, count in found:
                print(f"  {count:6d} x {line}", file=sys.stderr)
            first = first_error(data_dir / log)
            if first:
                print(f"the first error in full:\n{first}", file=sys.stderr)


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class Target:
    """Something the load generator can hit: a port, an API key, its server's pid."""

    name: str
    port: int
    key: str
    pid: int
    worker_pid: int | None = None


def start_engine(
    processes: Processes, workdir: Path, cpus: str, tokens: int, *, embed: bool = False
) -> Target:
    """The fake engine with the fast and the slow model (and the embedding model if
    ``embed``)."""
    port = free_port()
    log = workdir / "engine.log"
    command = [sys.executable, str(BENCH_DIR / "fake_engine.py"), "--port", str(port)]
    command += [
        "--tokens",
        str(tokens),
        "--model",
        f"{FAST_MODEL}=0",
        "--model",
        f"{SLOW_MODEL}=50",
    ]
    if embed:
        command += ["--model", f"{EMBED_MODEL}=0", "--dimensions", str(EMBED_DIMENSIONS)]
    process = processes.start(pinned(cpus, command), log=log, env=dict(os.environ))
    wait_until(
        lambda: http_get(port, "/v1/models")[0] == 200,
        what="fake engine",
        timeout=15,
        process=process,
        log=log,
    )
    return Target("engine", port, "", process.pid)


# --- infermesh ---------------------------------------------------------------------


def catalog_toml(engine_url: str, *, embed: bool = False) -> str:
    """A catalog of two priced models on the fake engine, one with fast, one with slow
    tokens (and, if ``embed``, a priced embedding model)."""
    entries = []
    for model in (FAST_MODEL, SLOW_MODEL):
        entries.append(
            "[[models]]\n"
            f'id = "{model}"\ntier = "fast"\ncontext_length = 8192\n'
            f'serve = {{ backend = "openai", engine_model = "{model}", '
            f'upstream_url = "{engine_url}" }}\n'
            f'pricing = {{ input_per_million = "{PRICES["input_per_million"]}", '
            f'output_per_million = "{PRICES["output_per_million"]}" }}\n'
        )
    if embed:
        entries.append(embedding_entry(engine_url))
    return "\n".join(entries)


def embedding_entry(engine_url: str) -> str:
    return (
        "[[models]]\n"
        f'id = "{EMBED_MODEL}"\nkind = "embedding"\ndimensions = {EMBED_DIMENSIONS}\n'
        f'tier = "fast"\ncontext_length = 512\n'
        f'serve = {{ backend = "openai", engine_model = "{EMBED_MODEL}", '
        f'upstream_url = "{engine_url}" }}\n'
        f'pricing = {{ input_per_million = "{PRICES["input_per_million"]}" }}\n'
    )


@dataclass(frozen=True)
class InfermeshConfig:
    """One way to run infermesh: its column name and the database / Redis it uses."""

    name: str = "infermesh"
    database_url: str | None = None
    redis_url: str | None = None


def infermesh_env(data_dir: Path, config: InfermeshConfig) -> dict[str, str]:
    env = dict(os.environ, INFERMESH_DATA_DIR=str(data_dir))
    if config.database_url:
        env["INFERMESH_DATABASE_URL"] = config.database_url
    if config.redis_url:
        env["INFERMESH_REDIS_URL"] = config.redis_url
        env["INFERMESH_REDIS_PREFIX"] = f"bench-{os.getpid()}-{data_dir.name}"
    return env


def cli(env: dict[str, str], *args: str) -> str:
    """Run ``python -m infermesh ARGS`` to completion; its stdout."""
    command = [sys.executable, "-m", "infermesh", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"infermesh {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def provision(env: dict[str, str]) -> tuple[str, str]:
    """Account ``bench`` (tier pro) with a key and credit, high limits on its tier, and a
    worker token; returns (API key, worker token)."""
    key = json.loads(cli(env, "keys", "create", "--account", "bench", "--tier", "pro", "--json"))
    cli(env, "credits", "grant", "bench", "100000", "--reason", "benchmark")
    cli(env, "limits", "set", "--tier", "pro", *HIGH_LIMITS, "--concurrency", "100000")
    token = cli(
        env, "workers", "token", "create", "--name", "bench-worker", "--operator", "bench-ops",
        "--max-slots", "4096", "--json",
    )  # fmt: skip
    return key["key"], json.loads(token)["token"]


def chat_body(model: str, *, max_tokens: int, stream: bool = False) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
        "max_tokens": max_tokens,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def start_infermesh(
    processes: Processes,
    workdir: Path,
    engine: Target,
    config: InfermeshConfig,
    cpus: tuple[str, str],
    *,
    embed: bool = False,
) -> Target:
    """Gateway (no embedded worker) on ``cpus[0]``, remote worker on ``cpus[1]`` (serving
    the embedding model too if ``embed``)."""
    data_dir = workdir / config.name.replace("+", "-")
    data_dir.mkdir()
    engine_url = f"http://127.0.0.1:{engine.port}/v1"
    (data_dir / "models.toml").write_text(catalog_toml(engine_url, embed=embed))
    env = infermesh_env(data_dir, config)
    key, token = provision(env)
    port = free_port()
    log = data_dir / "gateway.log"
    serve = [sys.executable, "-m", "infermesh", "serve", "--no-worker", "--port", str(port)]
    gateway = processes.start(pinned(cpus[0], serve), log=log, env=env)
    wait_until(
        lambda: http_get(port, "/health")[0] == 200,
        what="gateway",
        timeout=60,
        process=gateway,
        log=log,
    )
    worker = processes.start(
        pinned(cpus[1], worker_command(port, token, engine_url, embed=embed)),
        log=data_dir / "worker.log",
        env=env,
    )
    ready_body = chat_body(FAST_MODEL, max_tokens=4)
    wait_until(
        lambda: http_post(port, "/v1/chat/completions", ready_body, key)[0] == 200,
        what="infermesh worker",
        timeout=60,
        process=worker,
        log=data_dir / "worker.log",
    )
    return Target(config.name, port, key, gateway.pid, worker.pid)


def worker_command(port: int, token: str, engine_url: str, *, embed: bool = False) -> list[str]:
    embedding = ["--embed", f"{EMBED_MODEL}={EMBED_MODEL}"] if embed else []
    return [
        sys.executable, "-m", "infermesh", "worker", "--gateway", f"http://127.0.0.1:{port}",
        "--token", token, "--backend", "openai", "--upstream-url", engine_url,
        "--serve", f"{FAST_MODEL}={FAST_MODEL}", "--serve", f"{SLOW_MODEL}={SLOW_MODEL}",
        *embedding, "--concurrency", str(WORKER_SLOTS), "--name", "bench",
    ]  # fmt: skip


# --- PostgreSQL --------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database on the server of ``server_url`` (a
    ``postgresql+asyncpg://user@host:port/db`` URL), dropped afterwards."""
    base, _, _ = server_url.rpartition("/")
    name = f"infermesh_bench_{os.getpid()}"
    psql = ["psql", psql_url(server_url), "-q", "-c"]
    subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    try:
        yield f"{base}/{name}"
    finally:
        subprocess.run([*psql, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)


def psql_url(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


# --- LiteLLM -----------------------------------------------------------------------

LITELLM_KEY = "sk-bench-litellm"


def litellm_config(engine_url: str) -> str:
    models = []
    for model in (FAST_MODEL, SLOW_MODEL):
        models.append(
            f"  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n"
            f"      api_base: {engine_url}\n      api_key: none\n"
        )
    return (
        "model_list:\n" + "".join(models) + f"general_settings:\n  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
    )


def find_litellm(given: str | None) -> str | None:
    if given:
        return given
    default = Path("/tmp/litellm-venv/bin/litellm")
    return str(default) if default.exists() else None


def start_litellm(
    processes: Processes, workdir: Path, engine: Target, binary: str, cpus: str
) -> Target:
    """The LiteLLM proxy (one uvicorn worker, no database: keys, limits and spend off)."""
    config = workdir / "litellm.yaml"
    config.write_text(litellm_config(f"http://127.0.0.1:{engine.port}/v1"))
    port = free_port()
    log = workdir / "litellm.log"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
    env.pop("PYTHONPATH", None)
    command = [binary, "--config", str(config), "--port", str(port), "--num_workers", "1"]
    process = processes.start(pinned(cpus, command), log=log, env=env)
    body = chat_body(FAST_MODEL, max_tokens=4)
    wait_until(
        lambda: http_post(port, "/v1/chat/completions", body, LITELLM_KEY)[0] == 200,
        what="LiteLLM",
        timeout=180,
        process=process,
        log=log,
    )
    return Target("litellm", port, LITELLM_KEY, process.pid)


# --- what a process uses -----------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(_children(current))
    return tree


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of ``pids`` together (VmRSS)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` so far."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
