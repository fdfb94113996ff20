"""What the gateway costs per request: infermesh (gateway plus a remote worker) against
the engine hit directly and, when installed, the LiteLLM proxy, on a fast fake engine.

Run (from the repository root; wrk must be installed):

    python bench/serving.py [--quick] [--duration 10] [--postgres] [--redis]
        [--litellm /tmp/litellm-venv/bin/litellm] [--profile bench/profiles/gateway.svg]
        [--json bench/results/serving-DATE.json]

infermesh runs as ``python -m infermesh`` (set PYTHONPATH=/other/tree/src to measure
another checkout) with keys, rate limits (high, but enforced) and per-token billing on;
its gateway is pinned to --gateway-cpus, while the engine, the worker, wrk and this
script share --load-cpus. LiteLLM (found at /tmp/litellm-venv/bin/litellm unless given)
runs without a database: no keys, limits or spend tracking. Every scenario is warmed up
first. The table goes to stdout (Markdown) and, with the raw numbers, to the JSON file.
--postgres and --redis add an infermesh column each (a scratch database on the server of
--database-url; Redis limits on --redis-url). --profile records a py-spy flame graph of
the gateway during an extra c16 non-stream run, and the collapsed stacks beside it
(summarized on stdout; see bench/profile_summary.py). Every process started here is
stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import profile_summary
import serving_load as load
import serving_report as report
import serving_stack as stack

Metrics = dict[str, Any]
MB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs, a shorter hold")
    parser.add_argument("--duration", type=float, help="seconds per measurement (10)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each (2)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer (32)")
    parser.add_argument("--streams", type=int, default=1000, help="streams held open (1000)")
    parser.add_argument("--hold", type=float, help="seconds the streams are held (10)")
    parser.add_argument("--postgres", action="store_true", help="also infermesh on PostgreSQL")
    parser.add_argument(
        "--database-url",
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL server (a scratch database is made on it) for --postgres",
    )
    parser.add_argument("--redis", action="store_true", help="also infermesh with Redis limits")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--litellm", help="the litellm binary (default: auto-detected)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM")
    parser.add_argument("--profile", type=Path, help="py-spy flame graph (SVG) of the gateway")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--gateway-cpus", default="0", help="CPUs of the gateway (taskset)")
    parser.add_argument("--load-cpus", default="1", help="CPUs of everything else")
    args = parser.parse_args()
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.hold = args.hold or (5.0 if args.quick else 10.0)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.json = args.json or stack.BENCH_DIR / "results" / f"serving-{stamp}.json"
    return args


# --- scenarios ---------------------------------------------------------------------


def wrk(
    target: stack.Target, args: argparse.Namespace, connections: int, seconds: float
) -> load.WrkResult:
    body = stack.chat_body(stack.FAST_MODEL, max_tokens=args.tokens)
    return load.run_wrk(
        target.port, body, target.key, connections=connections, seconds=seconds, cpus=args.load_cpus
    )


def server_pids(target: stack.Target) -> list[int]:
    return stack.process_tree(target.pid)


def measure_plain(target: stack.Target, args: argparse.Namespace) -> Metrics:
    """Non-streamed requests at concurrency 16 (with CPU per request), 1 and 64."""
    wrk(target, args, 16, args.warmup)
    pids = server_pids(target)
    cpu_before = stack.cpu_seconds(pids)
    worker_before = stack.cpu_seconds([target.worker_pid]) if target.worker_pid else 0.0
    c16 = wrk(target, args, 16, args.duration)
    requests = max(c16.requests, 1)
    metrics: Metrics = {
        "c16_rps": c16.rps,
        "c16_p50_ms": c16.p50_ms,
        "c16_p99_ms": c16.p99_ms,
        "c16_errors": c16.errors,
        "c16_cpu_ms": 1000 * (stack.cpu_seconds(pids) - cpu_before) / requests,
    }
    if target.worker_pid:
        worker_cpu = stack.cpu_seconds([target.worker_pid]) - worker_before
        metrics["c16_worker_cpu_ms"] = 1000 * worker_cpu / requests
    wrk(target, args, 1, args.warmup)
    c1 = wrk(target, args, 1, args.duration)
    metrics.update(c1_p50_ms=c1.p50_ms, c1_p99_ms=c1.p99_ms, c1_rps=c1.rps, c1_errors=c1.errors)
    wrk(target, args, 64, args.warmup)
    c64 = wrk(target, args, 64, args.duration)
    metrics.update(c64_rps=c64.rps, c64_p99_ms=c64.p99_ms, c64_errors=c64.errors)
    return metrics


def stream_summary(timings: list[load.StreamTiming], prefix: str) -> Metrics:
    ttfts = [t.ttft * 1000 for t in timings if t.ttft is not None]
    gaps = [gap * 1000 for t in timings for gap in t.gaps()]
    return {
        f"{prefix}_streams": len(timings),
        f"{prefix}_errors": sum(1 for t in timings if t.error or not t.finished),
        f"{prefix}_ttft_p50_ms": load.percentile(ttfts, 50),
        f"{prefix}_ttft_p99_ms": load.percentile(ttfts, 99),
        f"{prefix}_gap_p50_ms": load.percentile(gaps, 50),
        f"{prefix}_gap_p99_ms": load.percentile(gaps, 99),
    }


async def measure_streams(target: stack.Target, args: argparse.Namespace) -> Metrics:
    """Streams of ``tokens`` tokens at c16 from the fast engine, then from the slow one
    (a token every 50 ms)."""
    fast = stack.chat_body(stack.FAST_MODEL, max_tokens=args.tokens, stream=True)
    slow = stack.chat_body(stack.SLOW_MODEL, max_tokens=args.tokens, stream=True)
    await load.stream_load(target.port, fast, target.key, concurrency=16, seconds=args.warmup)
    timings = await load.stream_load(
        target.port, fast, target.key, concurrency=16, seconds=args.duration
    )
    metrics = stream_summary(timings, "stream")
    seconds = max(args.duration, 2.0 * args.tokens * 0.05)
    timings = await load.stream_load(target.port, slow, target.key, concurrency=16, seconds=seconds)
    return metrics | stream_summary(timings, "slow")


async def measure_open_streams(target: stack.Target, args: argparse.Namespace) -> Metrics:
    """``streams`` slow streams held open while new requests keep coming: chat requests
    (through the worker) and ``GET /v1/models`` (the gateway alone)."""
    tokens = int((args.hold + 30) / 0.05)
    slow = stack.chat_body(stack.SLOW_MODEL, max_tokens=tokens, stream=True)
    side = {
        "chat": load.SideRequest(
            "POST",
            load.CHAT_PATH,
            stack.chat_body(stack.FAST_MODEL, max_tokens=args.tokens, stream=True),
        ),
        "models": load.SideRequest("GET", "/v1/models"),
    }
    result = await load.open_streams(
        target.port,
        target.key,
        streams=args.streams,
        hold=args.hold,
        body=slow,
        side=side,
        rss=lambda: stack.rss_bytes(server_pids(target)),
    )
    metrics: Metrics = {
        "open_streams": result.streams,
        "open_first_token": result.first_token,
        "open_errors": result.errors,
        "open_peak_rss_mb": result.peak_rss / MB,
        "open_all_first_s": result.seconds_to_all_first_tokens,
    }
    for name, latencies in result.side_latencies.items():
        side_ms = [latency * 1000 for latency in latencies]
        metrics[f"open_{name}_requests"] = len(side_ms)
        metrics[f"open_{name}_errors"] = result.side_errors[name]
        metrics[f"open_{name}_p50_ms"] = load.percentile(side_ms, 50)
        metrics[f"open_{name}_p99_ms"] = load.percentile(side_ms, 99)
    return metrics


def run_async(scenario: Coroutine[Any, Any, Metrics]) -> Metrics:
    """Run a streaming scenario on uvloop when it is installed (a cheaper client)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(scenario)
    return uvloop.run(scenario)


def measure(target: stack.Target, args: argparse.Namespace) -> Metrics:
    print(f"measuring {target.name} ...", file=sys.stderr, flush=True)
    metrics: Metrics = {"idle_rss_mb": stack.rss_bytes(server_pids(target)) / MB}
    metrics |= measure_plain(target, args)
    metrics |= run_async(measure_streams(target, args))
    time.sleep(1)
    metrics["rss_after_load_mb"] = stack.rss_bytes(server_pids(target)) / MB
    metrics |= run_async(measure_open_streams(target, args))
    time.sleep(2)
    metrics["rss_after_streams_mb"] = stack.rss_bytes(server_pids(target)) / MB
    return metrics


# --- profiling ---------------------------------------------------------------------


def py_spy(pid: int, output: Path, fmt: str, seconds: float, cpus: str) -> subprocess.Popen[bytes]:
    command = [
        "taskset", "-c", cpus, "py-spy", "record", "--pid", str(pid), "--format", fmt,
        "--function", "--gil", "--rate", "200", "--duration", str(max(1, round(seconds))),
        "--output", str(output),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile(target: stack.Target, args: argparse.Namespace) -> Metrics:
    """Two extra c16 runs under py-spy: the flame graph, then the collapsed stacks. Only
    the thread holding the GIL is sampled: Python's work, not threads waiting."""
    args.profile.parent.mkdir(parents=True, exist_ok=True)
    collapsed = args.profile.with_suffix(".collapsed.txt")
    rates = []
    worker = args.profile.with_name(args.profile.stem + "-worker.collapsed.txt")
    for output, fmt in ((args.profile, "flamegraph"), (collapsed, "raw")):
        recorders = [py_spy(target.pid, output, fmt, args.duration, args.load_cpus)]
        if fmt == "raw" and target.worker_pid is not None:  # the worker too, in the same run
            recorders.append(py_spy(target.worker_pid, worker, fmt, args.duration, args.load_cpus))
        time.sleep(0.5)
        rates.append(wrk(target, args, 16, args.duration).rps)
        for recorder in recorders:
            _, errors = recorder.communicate(timeout=args.duration + 60)
            if recorder.returncode != 0:
                raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')}")
    summary = profile_summary.summarize(profile_summary.parse(collapsed.read_text()), 15)
    print(f"\nprofile of the gateway ({args.profile}, {collapsed}):\n{summary}\n")
    if worker.exists():
        print(f"profile of the worker: {worker} (bench/profile_summary.py {worker})\n")
    return {"profiled_c16_rps": rates, "profile_svg": str(args.profile), "profile_summary": summary}


# --- the run -----------------------------------------------------------------------


def infermesh_configs(args: argparse.Namespace) -> list[stack.InfermeshConfig]:
    configs = [stack.InfermeshConfig()]
    if args.postgres:
        configs.append(stack.InfermeshConfig("infermesh+pg", database_url=args.database_url))
    if args.redis:
        configs.append(stack.InfermeshConfig("infermesh+redis", redis_url=args.redis_url))
    return configs


def run_infermesh(
    processes: stack.Processes, workdir: Path, engine: stack.Target, config: stack.InfermeshConfig,
    args: argparse.Namespace,
) -> Metrics:  # fmt: skip
    """Measure infermesh as ``config`` says (on a scratch PostgreSQL database if it has one)."""
    if not config.database_url:
        return measure_infermesh(processes, workdir, engine, config, args)
    with stack.scratch_database(config.database_url) as url:
        scratch = dataclasses.replace(config, database_url=url)
        return measure_infermesh(processes, workdir, engine, scratch, args)


def measure_infermesh(
    processes: stack.Processes, workdir: Path, engine: stack.Target, config: stack.InfermeshConfig,
    args: argparse.Namespace,
) -> Metrics:  # fmt: skip
    cpus = (args.gateway_cpus, args.load_cpus)
    target = stack.start_infermesh(processes, workdir, engine, config, cpus)
    try:
        metrics = measure(target, args)
        if args.profile and config.name == "infermesh":
            metrics |= profile(target, args)
        return metrics
    finally:
        processes.stop_all_but(engine.pid)
        stack.report_complaints(workdir / config.name.replace("+", "-"), label=config.name)


def run_litellm(
    processes: stack.Processes,
    workdir: Path,
    engine: stack.Target,
    binary: str,
    args: argparse.Namespace,
) -> Metrics:
    try:
        target = stack.start_litellm(processes, workdir, engine, binary, args.gateway_cpus)
        return measure(target, args)
    finally:
        processes.stop_all_but(engine.pid)


def run_all(
    processes: stack.Processes, workdir: Path, args: argparse.Namespace
) -> dict[str, Metrics]:
    engine = stack.start_engine(processes, workdir, args.load_cpus, args.tokens)
    results = {"engine": measure(engine, args)}
    litellm = None if args.no_litellm else stack.find_litellm(args.litellm)
    if litellm:
        results["litellm"] = guarded(
            "litellm", lambda: run_litellm(processes, workdir, engine, litellm, args)
        )
    for config in infermesh_configs(args):
        results[config.name] = guarded(
            config.name, lambda c=config: run_infermesh(processes, workdir, engine, c, args)
        )
    return results


def guarded(name: str, run: Callable[[], Metrics]) -> Metrics:
    """``run()``, or the error it failed with (the other columns still get measured)."""
    try:
        return run()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"{name} failed: {exc}", file=sys.stderr)
        return {"error": str(exc)}


def source_info() -> dict[str, str]:
    """Which infermesh was measured: its path, and the commit of its checkout."""
    found = subprocess.run(
        [sys.executable, "-c", "import infermesh; print(infermesh.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = Path(found.stdout.strip()).parent
    git = ["git", "--no-optional-locks", "-C", str(path)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    clean = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "."], capture_output=True)
    suffix = "" if clean.returncode == 0 else " + uncommitted changes"
    return {"infermesh": str(path), "commit": commit.stdout.strip() + suffix}


def main() -> None:
    args = parse_args()
    os.sched_setaffinity(0, report.cpu_set(args.load_cpus))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    processes = stack.Processes()
    info = source_info()
    print(f"infermesh from {info['infermesh']} ({info['commit']})", file=sys.stderr)
    if os.getloadavg()[0] > 1.0:
        print(
            f"warning: load average {os.getloadavg()[0]:.1f}: numbers will be noisy",
            file=sys.stderr,
        )
    try:
        with tempfile.TemporaryDirectory(prefix="infermesh-bench-") as workdir:
            results = run_all(processes, Path(workdir), args)
    finally:
        processes.stop_all()
    table = report.markdown_table(results, args)
    checks = report.checks(results)
    print(table + "\n\n" + "\n".join(checks))
    report.write_json(args.json, info=info, args=args, results=results, table=table, checks=checks)
    print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
