"""What the forwarded hop between two gateways of one network adds, on a fast fake engine.

Run (from the repository root; wrk, a PostgreSQL server and Redis must be reachable):

    python bench/network_hop.py [--duration 10] [--warmup 2] [--moves 5]
        [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
        [--redis-url redis://127.0.0.1:6379/0] [--json bench/results/network-hop-DATE.json]

Gateway A holds one worker process; gateway B holds none, so B forwards every request
to A (``POST /internal/v1/generate``). Both share a scratch PostgreSQL database (made on
the server of --database-url, dropped afterwards) and a unique Redis prefix. Measured in
one run, each scenario warmed up first, A and B back to back: non-streamed latency and
streamed time to first token at concurrency 1, throughput at concurrency 16, and the
CPU time per request of every process (gateways, worker, engine; from /proc) during the
c16 runs. Then --moves times: a fresh gateway K holds a worker started with
``--gateway K --gateway B``; K is SIGKILLed and the time until B's /health shows the
worker connected to B (``"gateway": null``) is noted. Nothing is pinned to CPUs. Every
process started here is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import serving
import serving_load as load
import serving_stack as stack

Metrics = dict[str, Any]
NEW_TOKEN = ["workers", "token", "create", "--max-slots", "4096", "--json", "--name"]
ALL_CPUS = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer (32)")
    parser.add_argument("--concurrency", type=int, default=16, help="of the throughput runs")
    parser.add_argument("--moves", type=int, default=5, help="SIGKILL-and-move trials (5)")
    parser.add_argument(
        "--database-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args()
    today = datetime.date.today().isoformat()
    args.json = args.json or stack.BENCH_DIR / "results" / f"network-hop-{today}.json"
    return args


class Mesh:
    """The processes of the network and how to start them."""

    def __init__(self, processes: stack.Processes, workdir: Path, env: dict[str, str]) -> None:
        self.processes, self.workdir, self.env = processes, workdir, env
        self.engine_url, self.engine_pid = "", 0

    def gateway(self, name: str) -> stack.Target:
        port = stack.free_port()
        data_dir = self.workdir / name
        data_dir.mkdir()
        log = data_dir / "gateway.log"
        command = [
            sys.executable, "-m", "infermesh", "serve", "--no-worker", "--data-dir", str(data_dir),
            "--config", str(self.workdir / "models.toml"), "--port", str(port),
        ]  # fmt: skip
        env = dict(self.env, INFERMESH_PEER_URL=f"http://127.0.0.1:{port}")
        process = self.processes.start(command, log=log, env=env)
        stack.wait_until(
            lambda: stack.http_get(port, "/health")[0] == 200,
            what=f"gateway {name}", timeout=90, process=process, log=log,
        )  # fmt: skip
        return stack.Target(name, port, "", process.pid)

    def worker(self, name: str, token: str, *gateways: stack.Target) -> Any:
        data_dir = self.workdir / name
        data_dir.mkdir()
        command = stack.worker_command(gateways[0].port, token, self.engine_url)
        for other in gateways[1:]:
            command[6:6] = ["--gateway", f"http://127.0.0.1:{other.port}"]
        env = dict(self.env, INFERMESH_DATA_DIR=str(data_dir))
        return self.processes.start(command, log=data_dir / "worker.log", env=env)


def workers_on(gateway: stack.Target, prefix: str) -> list[dict[str, Any]]:
    """The workers of ``gateway``'s /health whose node id starts with ``prefix``."""
    workers = json.loads(stack.http_get(gateway.port, "/health")[1])["workers"]
    return [worker for worker in workers if worker["node_id"].startswith(prefix)]


def local_on(gateway: stack.Target, prefix: str) -> bool:
    return any(worker["gateway"] is None for worker in workers_on(gateway, prefix))


def cpu_of(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: stack.cpu_seconds(tree) for name, tree in pids.items()}


def plain(
    target: stack.Target, key: str, args: argparse.Namespace, connections: int,
    pids: dict[str, list[int]] | None = None,
) -> Metrics:  # fmt: skip
    """wrk at ``connections``, warmed up; with ``pids``, their CPU time per request."""
    body = stack.chat_body(stack.FAST_MODEL, max_tokens=args.tokens)
    for seconds in (args.warmup, args.duration):
        before = cpu_of(pids or {})
        result = load.run_wrk(
            target.port, body, key, connections=connections, seconds=seconds, cpus=ALL_CPUS
        )
    after, requests, name = cpu_of(pids or {}), max(result.requests, 1), f"c{connections}"
    metrics: Metrics = {
        f"{name}_rps": result.rps,
        f"{name}_p50_ms": result.p50_ms,
        f"{name}_p99_ms": result.p99_ms,
        f"{name}_requests": result.requests,
        f"{name}_errors": result.errors,
    }
    for process in after:
        metrics[f"cpu_ms_per_request_{process}"] = (
            1000 * (after[process] - before[process]) / requests
        )
    return metrics


def c1_stream(target: stack.Target, key: str, args: argparse.Namespace) -> Metrics:
    body = stack.chat_body(stack.FAST_MODEL, max_tokens=args.tokens, stream=True)

    async def run() -> list[load.StreamTiming]:
        await load.stream_load(target.port, body, key, concurrency=1, seconds=args.warmup)
        return await load.stream_load(target.port, body, key, concurrency=1, seconds=args.duration)

    timings = asyncio.run(run())
    ttfts = [t.ttft * 1000 for t in timings if t.ttft is not None]
    return {
        "stream_ttft_p50_ms": load.percentile(ttfts, 50),
        "stream_ttft_p99_ms": load.percentile(ttfts, 99),
        "stream_requests": len(timings),
        "stream_errors": sum(1 for t in timings if t.error or not t.finished),
    }


def measure(mesh: Mesh, key: str, token: str, args: argparse.Namespace) -> Metrics:
    a, b = mesh.gateway("a"), mesh.gateway("b")
    worker = mesh.worker("worker", token, a)
    body = stack.chat_body(stack.FAST_MODEL, max_tokens=4)
    log = mesh.workdir / "worker" / "worker.log"
    for gateway in (a, b):
        ok = lambda g=gateway: stack.http_post(g.port, load.CHAT_PATH, body, key)[0] == 200  # noqa: E731
        stack.wait_until(
            ok, what=f"a request at {gateway.name}", timeout=60, process=worker, log=log
        )
    seen_on_b = json.loads(stack.http_get(b.port, "/health")[1])["workers"]
    if not seen_on_b or any(w["gateway"] is None for w in seen_on_b):
        raise RuntimeError(f"B should see A's worker only: {seen_on_b}")
    named = {"A": a.pid, "B": b.pid, "worker": worker.pid, "engine": mesh.engine_pid}
    pids = {name: stack.process_tree(pid) for name, pid in named.items()}
    idle = cpu_of(pids)
    time.sleep(3)  # CPU ms per second of each process with no requests (presence, timers)
    idle = {name: 1000 * (seconds - idle[name]) / 3 for name, seconds in cpu_of(pids).items()}
    results: Metrics = {"idle_cpu_ms_per_s": idle, "A": {}, "B": {}}
    scenarios = {
        "c1": lambda target: plain(target, key, args, 1),
        "c1 streamed": lambda target: c1_stream(target, key, args),
        f"c{args.concurrency}": lambda target: plain(target, key, args, args.concurrency, pids),
    }
    for name, scenario in scenarios.items():
        for target in (a, b):  # A and B back to back, so that both see the same noise
            print(f"{name} at {target.name} ...", file=sys.stderr, flush=True)
            results[target.name.upper()] |= scenario(target)
    mesh.processes.stop(worker)
    mesh.processes.stop(next(p for p in mesh.processes.started if p.pid == a.pid))
    results["moves_s"] = moves(mesh, b, args)
    return results


def moves(mesh: Mesh, b: stack.Target, args: argparse.Namespace) -> list[float]:
    """Seconds from SIGKILL of a worker's gateway K until B's /health shows it local."""
    seconds = []
    for trial in range(args.moves):
        token = json.loads(stack.cli(mesh.env, *NEW_TOKEN, f"bench-moving-{trial}"))
        prefix = token["id"]  # node ids start with the worker's id
        k = mesh.gateway(f"k{trial}")
        worker = mesh.worker(f"moving-{trial}", token["token"], k, b)
        log = mesh.workdir / f"moving-{trial}" / "worker.log"
        placed = lambda k=k, p=prefix: local_on(k, p) and bool(workers_on(b, p))  # noqa: E731
        stack.wait_until(placed, what=f"worker on k{trial}", timeout=60, process=worker, log=log)
        killed = time.monotonic()
        os.killpg(k.pid, signal.SIGKILL)
        while not local_on(b, prefix):
            if time.monotonic() - killed > 60:
                raise RuntimeError(f"trial {trial}: the worker never moved:\n{stack.tail(log)}")
            time.sleep(0.01)
        seconds.append(time.monotonic() - killed)
        print(f"move {trial}: {seconds[-1]:.3f} s", file=sys.stderr, flush=True)
        for process in [p for p in mesh.processes.started if p.pid in (k.pid, worker.pid)]:
            mesh.processes.stop(process)
    return seconds


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: Metrics, args: argparse.Namespace) -> str:
    a, b, c = results["A"], results["B"], args.concurrency
    rows = [
        ("c1 non-stream p50 (ms)", "c1_p50_ms"), ("c1 non-stream p99 (ms)", "c1_p99_ms"),
        ("c1 stream TTFT p50 (ms)", "stream_ttft_p50_ms"),
        ("c1 stream TTFT p99 (ms)", "stream_ttft_p99_ms"),
        (f"c{c} non-stream req/s", f"c{c}_rps"), (f"c{c} non-stream p50 (ms)", f"c{c}_p50_ms"),
        (f"c{c} non-stream p99 (ms)", f"c{c}_p99_ms"),
    ]  # fmt: skip
    lines = ["| | at A (direct) | at B (forwarded to A) | B - A |", "|---|---:|---:|---:|"]
    for label, key in rows:
        diff = None if a.get(key) is None or b.get(key) is None else b[key] - a[key]
        lines.append(f"| {label} | {fmt(a.get(key))} | {fmt(b.get(key))} | {fmt(diff)} |")
    for name in ("A", "B", "worker", "engine"):
        key = f"cpu_ms_per_request_{name}"
        diff = b[key] - a[key]
        lines.append(f"| CPU ms/request, {name} (c{c}) | {fmt(a[key])} | {fmt(b[key])} | "
                     f"{fmt(diff)} |")  # fmt: skip
    errors = {side: sum(v for k, v in results[side].items() if k.endswith("errors"))
              for side in ("A", "B")}  # fmt: skip
    lines.append(f"| errors (all runs) | {errors['A']} | {errors['B']} | |")
    moved = results["moves_s"]
    if moved:
        lines.append(
            f"\nworker moves to B after its gateway is SIGKILLed ({len(moved)} trials): "
            f"min {min(moved):.3f} s, median {statistics.median(moved):.3f} s, "
            f"max {max(moved):.3f} s"
        )
    return "\n".join(lines)


def machine() -> Metrics:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": model, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "wrk": (wrk_version.stdout + wrk_version.stderr).splitlines()[:1]}  # fmt: skip


def run(args: argparse.Namespace, processes: stack.Processes, prefix: str) -> Metrics:
    with tempfile.TemporaryDirectory(prefix="infermesh-hop-") as tmp:
        workdir = Path(tmp)
        engine = stack.start_engine(processes, workdir, ALL_CPUS, args.tokens)
        with stack.scratch_database(args.database_url) as database_url:
            env = dict(os.environ, INFERMESH_DATA_DIR=str(workdir), INFERMESH_REDIS_PREFIX=prefix,
                       INFERMESH_DATABASE_URL=database_url, INFERMESH_REDIS_URL=args.redis_url,
                       INFERMESH_PEER_SECRET=secrets.token_urlsafe(24))  # fmt: skip
            engine_url = f"http://127.0.0.1:{engine.port}/v1"
            (workdir / "models.toml").write_text(stack.catalog_toml(engine_url))
            key, token = stack.provision(env)
            mesh = Mesh(processes, workdir, env)
            mesh.engine_url, mesh.engine_pid = engine_url, engine.pid
            try:
                return measure(mesh, key, token, args)
            finally:
                processes.stop_all()
                for log in ("a/gateway.log", "b/gateway.log", "worker/worker.log"):
                    for line, count in stack.complaints(workdir / log):
                        print(f"  {log}: {count} x {line}", file=sys.stderr)
                    if first := stack.first_error(workdir / log):
                        print(f"the first error of {log}:\n{first}", file=sys.stderr)


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info, before = serving.source_info(), machine()
    prefix = f"bench-hop-{os.getpid()}-{secrets.token_hex(4)}"
    processes = stack.Processes()
    try:
        results = run(args, processes, prefix)
    finally:
        processes.stop_all()
        client = redis.Redis.from_url(args.redis_url)
        for name in client.scan_iter(f"{prefix}*"):
            client.delete(name)
        client.close()
    table = markdown_table(results, args)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "source": info,
        "machine": before, "load_average_after": os.getloadavg(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results, "table": table,
    }  # fmt: skip
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
