"""What the gateway costs per request on each of its APIs: chat completions, the Responses
API, Anthropic's Messages API and embeddings, through infermesh (gateway plus a remote
worker) on the fast fake engine, beside the engine hit directly with the same body.

Run (from the repository root; wrk must be installed):

    python bench/endpoints.py [--quick] [--duration 5] [--warmup 2] [--tokens 32]
        [--max-foreign 0.05] [--attempts 4] [--profile /tmp/endpoint-profiles]
        [--json bench/results/endpoints-DATE.json]

The stack is bench/serving.py's default column: ``python -m infermesh`` on SQLite (set
PYTHONPATH=/other/tree/src to measure another checkout) with keys, rate limits (high,
but enforced) and billing on, its gateway pinned to --gateway-cpus, while the engine, the
worker, wrk and this script share --load-cpus. Each scenario is first checked with one
request (status 200 and an answer of its API's shape), then warmed up and measured by wrk
at concurrency 1 and 16 (streams: 16 only, the whole stream counted as one request).
Gateway CPU per request is the CPU time of the gateway's process tree over the requests
wrk counted; the worker's likewise. A run during which other processes (not this
benchmark's, not the kernel's) used more than --max-foreign of a CPU is done again, after
a quiet moment, --attempts times at most; the quietest counts. The engine alone is
measured with each body it serves as it is (chat and embeddings; the Responses and
Messages requests reach it as the chat body). --profile records py-spy's collapsed
stacks of the gateway in an extra c16 run of each scenario, into that folder, and prints
where the time went. The table goes to stdout (Markdown) and, with the raw numbers, to
the JSON file.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import profile_summary
import serving_load as load
import serving_report as report
import serving_stack as stack
from serving import py_spy, source_info

Metrics = dict[str, Any]
WRK_SCRIPT = stack.BENCH_DIR / "wrk_endpoints.lua"
PROMPT = "Hello there, how are you today?"
PASSAGE = (
    "The gateway admits each request, holds credit for it, routes it to a worker on the "
    "mesh, and settles the bill when the answer is complete."
)
"""About twenty words: one input of the embedding scenarios."""
ANTHROPIC_HEADERS = (("anthropic-version", "2023-06-01"),)


# --- the scenarios -----------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One request sent again and again: its path, body, headers and the check that an
    answer to it is whole. ``engine`` names the scenario whose engine-alone numbers
    stand beside it (the engine gets the same body; None: the engine is not measured)."""

    name: str
    path: str
    body: bytes
    check: Callable[[bytes], bool]
    headers: tuple[tuple[str, str], ...] = ()
    key_header: str = "Authorization"
    stream: bool = False
    engine: str | None = None
    baseline: str = "chat"
    """The chat scenario this one's CPU is compared with."""

    def headers_for(self, key: str) -> str:
        """The extra headers, as wrk_endpoints.lua reads them: the key and the API's own."""
        lines = [f"{name}: {value}" for name, value in self.headers]
        if key:
            value = f"Bearer {key}" if self.key_header == "Authorization" else key
            lines.append(f"{self.key_header}: {value}")
        return "\n".join(lines)


def _json(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _field_is(name: str, value: str) -> Callable[[bytes], bool]:
    return lambda answer: json.loads(answer).get(name) == value


def _contains(marker: bytes) -> Callable[[bytes], bool]:
    return lambda answer: marker in answer


def _vectors_of(count: int) -> Callable[[bytes], bool]:
    """The check of an embeddings answer: ``count`` vectors of the model's length."""

    def length(value: object) -> int:
        if isinstance(value, str):
            return len(base64.b64decode(value)) // 4
        return len(value) if isinstance(value, list) else -1

    def check(answer: bytes) -> bool:
        data = json.loads(answer).get("data") or []
        wanted = stack.EMBED_DIMENSIONS
        return len(data) == count and all(length(item["embedding"]) == wanted for item in data)

    return check


def chat_scenarios(tokens: int, *, stream: bool) -> list[Scenario]:
    """Chat completions, a response and a message, asking for ``tokens`` tokens; the
    engine gets the chat body for all three."""
    suffix = "-stream" if stream else ""
    extra = {"stream": True} if stream else {}
    user = [{"role": "user", "content": PROMPT}]

    def scenario(name: str, path: str, body: bytes, check: Callable[[bytes], bool]) -> Scenario:
        chat = "chat" + suffix
        return Scenario(name + suffix, path, body, check, stream=stream, engine=chat, baseline=chat)

    chat = scenario(
        "chat",
        load.CHAT_PATH,
        stack.chat_body(stack.FAST_MODEL, max_tokens=tokens, stream=stream),
        _contains(b"data: [DONE]") if stream else _field_is("object", "chat.completion"),
    )
    response = scenario(
        "responses",
        "/v1/responses",
        _json(model=stack.FAST_MODEL, input=PROMPT, max_output_tokens=tokens, **extra),
        _contains(b"event: response.incomplete") if stream else _field_is("object", "response"),
    )
    message = scenario(
        "messages",
        "/v1/messages",
        _json(model=stack.FAST_MODEL, max_tokens=tokens, messages=user, **extra),
        _contains(b"event: message_stop") if stream else _field_is("type", "message"),
    )
    anthropic = dataclasses.replace(message, headers=ANTHROPIC_HEADERS, key_header="x-api-key")
    return [chat, response, anthropic]


def embedding_scenario(count: int, encoding: str) -> Scenario:
    """``count`` inputs of about twenty words (different ones), as ``encoding``."""
    inputs = [f"{index}: {PASSAGE}" for index in range(count)]
    body = _json(model=stack.EMBED_MODEL, input=inputs[0] if count == 1 else inputs)
    if encoding != "float":  # the openai SDK asks for base64 unless told otherwise
        body = _json(**json.loads(body), encoding_format=encoding)
    name = f"embeddings-{count}" + ("" if encoding == "base64" else f"-{encoding}")
    path = "/v1/embeddings"
    return Scenario(name, path, body, _vectors_of(count), engine=name)


def scenarios(tokens: int) -> list[Scenario]:
    return [
        *chat_scenarios(tokens, stream=False),
        embedding_scenario(1, "base64"),
        embedding_scenario(16, "base64"),
        embedding_scenario(16, "float"),
        *chat_scenarios(tokens, stream=True),
    ]


def chosen_scenarios(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios --only names (all without it)."""
    every = scenarios(args.tokens)
    if not args.only:
        return every
    names = set(args.only.split(","))
    unknown = names - {scenario.name for scenario in every}
    if unknown:
        raise SystemExit(f"--only: no scenario {', '.join(sorted(unknown))}")
    return [scenario for scenario in every if scenario.name in names]


# --- measuring ---------------------------------------------------------------------


def probe(target: stack.Target, scenario: Scenario) -> None:
    """One request; fail unless it is answered 200 with an answer of the API's shape."""
    headers = {"Content-Type": "application/json"}
    for line in scenario.headers_for(target.key).splitlines():
        name, _, value = line.partition(": ")
        headers[name] = value
    connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    try:
        connection.request("POST", scenario.path, body=scenario.body, headers=headers)
        response = connection.getresponse()
        status, answer = response.status, response.read()
    finally:
        connection.close()
    if status != 200 or not scenario.check(answer):
        raise RuntimeError(f"{target.name} {scenario.name}: HTTP {status}: {answer[:600]!r}")


def run_wrk(
    target: stack.Target, scenario: Scenario, *, connections: int, seconds: float, cpus: str
) -> load.WrkResult:
    """``connections`` keep-alive connections sending ``scenario`` for ``seconds``."""
    command = [
        "taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--latency", "--timeout", "10s", "-s", str(WRK_SCRIPT),
        f"http://127.0.0.1:{target.port}{scenario.path}",
    ]  # fmt: skip
    env = dict(
        os.environ,
        BENCH_BODY=scenario.body.decode(),
        BENCH_HEADERS=scenario.headers_for(target.key),
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    return load.parse_wrk(done.stdout + done.stderr)


def measure_at(
    target: stack.Target, scenario: Scenario, connections: int, args: argparse.Namespace
) -> Metrics:
    """Warm up, then measured wrk runs until one had the CPUs to itself (other
    processes used at most --max-foreign of a CPU), --attempts at most; the quietest."""
    run_wrk(target, scenario, connections=connections, seconds=args.warmup, cpus=args.load_cpus)
    key = f"c{connections}_foreign_cpu"
    attempts: list[Metrics] = []
    while len(attempts) < args.attempts:
        if attempts:
            busy = attempts[-1][key]
            print(f"  {scenario.name} c{connections}: other processes used {busy:.2f} CPU; again",
                  file=sys.stderr, flush=True)  # fmt: skip
            wait_for_quiet(args.max_foreign, args.quiet_wait)
        attempts.append(measured_run(target, scenario, connections, args))
        if attempts[-1][key] <= args.max_foreign:
            break
    best = min(attempts, key=lambda metrics: metrics[key])
    return best | {f"c{connections}_attempts": [metrics[key] for metrics in attempts]}


def measured_run(
    target: stack.Target, scenario: Scenario, connections: int, args: argparse.Namespace
) -> Metrics:
    """One wrk run: rate, latency, CPU per request, and the CPU other processes used
    meanwhile (CPU seconds a second)."""
    server, worker = stack.process_tree(target.pid), [target.worker_pid or 0]
    before = stack.cpu_seconds(server), stack.cpu_seconds(worker)
    others, started = foreign_ticks(), time.monotonic()
    result = run_wrk(
        target, scenario, connections=connections, seconds=args.duration, cpus=args.load_cpus
    )
    foreign = foreign_seconds(others, foreign_ticks()) / (time.monotonic() - started)
    requests = max(result.requests, 1)
    prefix = f"c{connections}"
    metrics: Metrics = {
        f"{prefix}_foreign_cpu": foreign,
        f"{prefix}_requests": result.requests,
        f"{prefix}_rps": result.rps,
        f"{prefix}_p50_ms": result.p50_ms,
        f"{prefix}_p99_ms": result.p99_ms,
        f"{prefix}_errors": result.errors,
        f"{prefix}_cpu_ms": 1000 * (stack.cpu_seconds(server) - before[0]) / requests,
    }
    if target.worker_pid:
        worker_cpu = stack.cpu_seconds(worker) - before[1]
        metrics[f"{prefix}_worker_cpu_ms"] = 1000 * worker_cpu / requests
    return metrics


def measure(
    target: stack.Target, chosen: list[Scenario], args: argparse.Namespace
) -> dict[str, Metrics]:
    """Every scenario of ``chosen`` on ``target``: c1 and c16, streams at c16 only."""
    results: dict[str, Metrics] = {}
    for scenario in chosen:
        print(f"{target.name}: {scenario.name} ...", file=sys.stderr, flush=True)
        probe(target, scenario)
        metrics: Metrics = {}
        for connections in (16,) if scenario.stream else (1, 16):
            metrics |= measure_at(target, scenario, connections, args)
        results[scenario.name] = metrics
    return results


def profile(
    target: stack.Target, chosen: list[Scenario], args: argparse.Namespace
) -> dict[str, str]:
    """py-spy's collapsed stacks of the gateway during an extra c16 run of each scenario;
    the summary of each (self time by package and function, inclusive by infermesh
    function)."""
    args.profile.mkdir(parents=True, exist_ok=True)
    seconds = max(2.0, round(args.duration / 2))
    summaries = {}
    for scenario in chosen:
        output = args.profile / f"{scenario.name}.collapsed.txt"
        recorder = py_spy(target.pid, output, "raw", seconds, args.load_cpus)
        time.sleep(0.5)
        run_wrk(target, scenario, connections=16, seconds=seconds, cpus=args.load_cpus)
        _, errors = recorder.communicate(timeout=seconds + 60)
        if recorder.returncode != 0:
            raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')}")
        stacks = profile_summary.parse(output.read_text())
        summaries[scenario.name] = profile_summary.summarize(stacks, args.profile_top)
    return summaries


# --- other processes ---------------------------------------------------------------


def foreign_ticks() -> dict[int, tuple[int, int]]:
    """Parent and CPU clock ticks (user and system, own and of reaped children) of every
    process that is neither this benchmark's (this one and its descendants) nor the
    kernel's."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = int(fields[1]), sum(map(int, fields[11:15]))
    ours, queue = set(), [os.getpid()]
    while queue:
        pid = queue.pop()
        ours.add(pid)
        queue += [child for child, (parent, _) in table.items() if parent == pid]
    return {
        pid: times for pid, times in table.items() if pid not in ours and pid != 2 and times[0] != 2
    }


def foreign_seconds(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """The CPU seconds other processes used between two :func:`foreign_ticks`. A process
    that ended meanwhile has its whole time added to its parent's children's time (or,
    its parent gone too, to an ancestor's): what it had used before is taken off."""
    ticks = sum(max(0, now - before.get(pid, (0, 0))[1]) for pid, (_, now) in after.items())
    ended = sum(used for pid, (_, used) in before.items() if pid not in after)
    return max(0, ticks - ended) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(most: float, patience: float) -> None:
    """Wait (``patience`` seconds at most) for 2 s in which other processes used at
    most ``most`` of a CPU."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        before = foreign_ticks()
        time.sleep(2)
        if foreign_seconds(before, foreign_ticks()) / 2 <= most:
            return


# --- the run -----------------------------------------------------------------------


def run_all(processes: stack.Processes, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    chosen = chosen_scenarios(args)
    engine = stack.start_engine(processes, workdir, args.load_cpus, args.tokens, embed=True)
    engine_bodies = {scenario.engine for scenario in chosen}
    direct = [scenario for scenario in scenarios(args.tokens) if scenario.name in engine_bodies]
    results: dict[str, Any] = {
        "scenarios": {scenario.name: described(scenario) for scenario in chosen}
    }
    results["engine"] = measure(engine, direct, args)
    config = stack.InfermeshConfig()
    cpus = (args.gateway_cpus, args.load_cpus)
    try:
        mesh = stack.start_infermesh(processes, workdir, engine, config, cpus, embed=True)
        results["infermesh"] = measure(mesh, chosen, args)
        if args.profile:
            try:
                results["profiles"] = profile(mesh, chosen, args)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                results["profiles"] = {"failed": str(exc)}
    finally:
        processes.stop_all_but(engine.pid)
        stack.report_complaints(workdir / config.name)
    return results


def described(scenario: Scenario) -> dict[str, Any]:
    """What the JSON says of a scenario: the request, less the key."""
    return {
        "path": scenario.path,
        "body": json.loads(scenario.body),
        "headers": dict(scenario.headers),
        "key_header": scenario.key_header,
        "stream": scenario.stream,
        "engine_alone": scenario.engine,
    }


# --- the report --------------------------------------------------------------------

HEADER = (
    "| endpoint | c1 p50 / p99 ms | c1 gw CPU ms/req | c16 req/s | c16 p50 / p99 ms "
    "| c16 gw CPU ms/req | vs chat | c16 worker CPU ms/req | engine alone: c1 p50 ms, "
    "c16 req/s | added c1 p50 ms |\n|" + "---|" * 10
)


def _cells(
    scenario: Scenario, mesh: dict[str, Metrics], engine: dict[str, Metrics]
) -> Iterator[str]:
    own, chat = mesh.get(scenario.name, {}), mesh.get(scenario.baseline, {})
    alone = engine.get(scenario.engine or "", {})
    number = report.number
    yield scenario.name + ("" if scenario.engine in (scenario.name, None) else " ¹")
    yield report.pair(own, "c1_p50_ms", "c1_p99_ms")
    yield number(own.get("c1_cpu_ms"), 3)
    yield number(own.get("c16_rps"), 0)
    yield report.pair(own, "c16_p50_ms", "c16_p99_ms")
    yield number(own.get("c16_cpu_ms"), 3)
    yield _ratio(own.get("c16_cpu_ms"), chat.get("c16_cpu_ms"))
    yield number(own.get("c16_worker_cpu_ms"), 3)
    yield f"{number(alone.get('c1_p50_ms'), 3)}, {number(alone.get('c16_rps'), 0)}"
    yield _difference(own.get("c1_p50_ms"), alone.get("c1_p50_ms"))


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "-"


def _difference(value: float | None, base: float | None) -> str:
    return f"{value - base:+.2f}" if value is not None and base is not None else "-"


def markdown_table(results: dict[str, Any], chosen: list[Scenario]) -> str:
    mesh, engine = results.get("infermesh", {}), results.get("engine", {})
    lines = [HEADER]
    lines += ["| " + " | ".join(_cells(scenario, mesh, engine)) + " |" for scenario in chosen]
    lines.append(
        "\n¹ the engine gets the chat body for these: its column is the chat scenario's. "
        "Streams run at c16 only; a whole stream is one request."
    )
    return "\n".join(lines)


def notes(results: dict[str, Any], max_foreign: float) -> list[str]:
    """A line for each measured run that had errors, or was done again, or was noisy
    (other processes used more than ``max_foreign`` of a CPU) in every attempt."""
    found = []
    for target in ("engine", "infermesh"):
        for name, metrics in results.get(target, {}).items():
            for key, value in metrics.items():
                run = f"{target} {name} {key.split('_')[0]}"
                if key.endswith("_errors") and value:
                    found.append(f"{run}: {value} errors")
                elif key.endswith("_attempts") and len(value) > 1:
                    busy = ", ".join(f"{share:.2f}" for share in value)
                    found.append(
                        f"{run}: measured {len(value)} times (other processes: {busy} CPU)"
                    )
                elif key.endswith("_foreign_cpu") and value > max_foreign:
                    found.append(f"{run}: noisy, other processes used {value:.2f} CPU")
    return found or ["no errors; every run had the CPUs to itself"]


# --- main --------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 s warm-ups")
    parser.add_argument("--duration", type=float, help="seconds per measurement (5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each (2)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer (32)")
    parser.add_argument("--only", help="scenarios to run, by name, comma-separated (all)")
    parser.add_argument("--profile", type=Path, help="folder for py-spy's collapsed stacks")
    parser.add_argument("--profile-top", type=int, default=8, help="lines per profile section")
    parser.add_argument(
        "--max-foreign", type=float, default=0.05,
        help="CPU other processes may use during a run before it is done again (0.05)",
    )  # fmt: skip
    parser.add_argument("--attempts", type=int, default=4, help="runs at most per measurement")
    parser.add_argument(
        "--quiet-wait", type=float, default=60, help="seconds to wait for quiet before a rerun"
    )
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--gateway-cpus", default="0", help="CPUs of the gateway (taskset)")
    parser.add_argument("--load-cpus", default="1", help="CPUs of everything else")
    args = parser.parse_args()
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.json = args.json or stack.BENCH_DIR / "results" / f"endpoints-{stamp}.json"
    return args


def main() -> None:
    args = parse_args()
    os.sched_setaffinity(0, report.cpu_set(args.load_cpus))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = source_info()
    print(f"infermesh from {info['infermesh']} ({info['commit']})", file=sys.stderr)
    if os.getloadavg()[0] > 1.0:
        print(
            f"warning: load average {os.getloadavg()[0]:.1f}: numbers will be noisy",
            file=sys.stderr,
        )
    processes = stack.Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="infermesh-endpoints-") as workdir:
            results = run_all(processes, Path(workdir), args)
    finally:
        processes.stop_all()
    for name, summary in results.get("profiles", {}).items():
        print(f"\nprofile of the gateway, {name} ({args.profile / name}.collapsed.txt):\n{summary}")
    table = markdown_table(results, chosen_scenarios(args))
    remarks = notes(results, args.max_foreign)
    print("\n" + table + "\n\n" + "\n".join(remarks))
    report.write_json(args.json, info=info, args=args, results=results, table=table, checks=remarks)
    print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
