"""The report of bench/serving.py: a Markdown table (scenario | engine direct | LiteLLM |
infermesh | ratio), the issue's targets checked, and the JSON file with everything."""

from __future__ import annotations

import argparse
import datetime
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Metrics = dict[str, Any]
Compare = Callable[[Metrics, Metrics, Metrics | None], str]


def cpu_set(cpus: str) -> set[int]:
    """``"0"``, ``"1-3"`` or ``"1,3"`` as a set of CPU numbers."""
    chosen: set[int] = set()
    for part in cpus.split(","):
        first, _, last = part.partition("-")
        chosen.update(range(int(first), int(last or first) + 1))
    return chosen


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def pair(metrics: Metrics, first: str, second: str, digits: int = 2, paren: bool = False) -> str:
    a, b = number(metrics.get(first), digits), number(metrics.get(second), digits)
    return f"{a} ({b})" if paren else f"{a} / {b}"


def added(key: str) -> Compare:
    """infermesh minus the engine direct, in ms."""

    def compare(mesh: Metrics, engine: Metrics, _: Metrics | None) -> str:
        if mesh.get(key) is None or engine.get(key) is None:
            return "-"
        return f"{mesh[key] - engine[key]:+.2f} ms"

    return compare


def added_pair(first: str, second: str) -> Compare:
    def compare(mesh: Metrics, engine: Metrics, litellm: Metrics | None) -> str:
        return f"{added(first)(mesh, engine, litellm)} ({added(second)(mesh, engine, litellm)})"

    return compare


def times_litellm(key: str) -> Compare:
    def compare(mesh: Metrics, engine: Metrics, litellm: Metrics | None) -> str:
        if not litellm or not litellm.get(key) or mesh.get(key) is None:
            return "-"
        return f"x{mesh[key] / litellm[key]:.1f} LiteLLM"

    return compare


def nothing(mesh: Metrics, engine: Metrics, litellm: Metrics | None) -> str:
    return ""


def plain_errors(metrics: Metrics) -> str:
    keys = ("c16_errors", "c1_errors", "c64_errors", "stream_errors", "slow_errors")
    return str(sum(int(metrics.get(key) or 0) for key in keys))


@dataclass(frozen=True)
class Row:
    label: str
    cell: Callable[[Metrics], str]
    compare: Compare = nothing


def rows(args: argparse.Namespace) -> list[Row]:
    n, tokens = args.streams, args.tokens
    return [
        Row(
            "non-stream c16: req/s", lambda m: number(m.get("c16_rps"), 0), times_litellm("c16_rps")
        ),
        Row(
            "non-stream c16: p50 / p99 ms",
            lambda m: pair(m, "c16_p50_ms", "c16_p99_ms"),
            added("c16_p99_ms"),
        ),
        Row("non-stream c16: server CPU ms/request", lambda m: number(m.get("c16_cpu_ms"))),
        Row("non-stream c16: worker CPU ms/request", lambda m: number(m.get("c16_worker_cpu_ms"))),
        Row(
            "non-stream c1: p50 / p99 ms",
            lambda m: pair(m, "c1_p50_ms", "c1_p99_ms"),
            added("c1_p50_ms"),
        ),
        Row(
            "non-stream c64: req/s", lambda m: number(m.get("c64_rps"), 0), times_litellm("c64_rps")
        ),
        Row(
            f"stream c16, {tokens} tokens: TTFT p50 (p99) ms",
            lambda m: pair(m, "stream_ttft_p50_ms", "stream_ttft_p99_ms", paren=True),
            added_pair("stream_ttft_p50_ms", "stream_ttft_p99_ms"),
        ),
        Row(
            "stream, a token every 50 ms: gap p50 / p99 ms",
            lambda m: pair(m, "slow_gap_p50_ms", "slow_gap_p99_ms"),
        ),
        Row("errors in the runs above", plain_errors),
        Row(f"{n} open streams: peak RSS MB", lambda m: number(m.get("open_peak_rss_mb"), 0)),
        Row(
            f"{n} open streams: got a token / errors",
            lambda m: pair(m, "open_first_token", "open_errors", 0),
        ),
        Row(
            f"{n} open streams: new chat requests p50 / p99 ms (n)",
            lambda m: (
                pair(m, "open_chat_p50_ms", "open_chat_p99_ms")
                + f" ({m.get('open_chat_requests', 0)})"
            ),
        ),
        Row(
            f"{n} open streams: GET /v1/models p50 / p99 ms (n)",
            lambda m: (
                pair(m, "open_models_p50_ms", "open_models_p99_ms")
                + f" ({m.get('open_models_requests', 0)})"
            ),
        ),
        Row("idle RSS MB", lambda m: number(m.get("idle_rss_mb"), 0)),
    ]


def markdown_table(results: dict[str, Metrics], args: argparse.Namespace) -> str:
    engine, litellm = results.get("engine", {}), results.get("litellm")
    meshes = [name for name in results if name.startswith("infermesh")]
    columns = ["engine direct", "LiteLLM", *meshes]
    header = ["scenario", *columns, *(f"vs ({name})" for name in meshes)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows(args):
        cells = [_cell(row, results.get(name)) for name in ("engine", "litellm", *meshes)]
        ratios = [_ratio(row, results[name], engine, litellm) for name in meshes]
        lines.append("| " + " | ".join([row.label, *cells, *ratios]) + " |")
    return "\n".join(lines)


def _cell(row: Row, metrics: Metrics | None) -> str:
    if metrics is None:
        return "n/a"
    return "failed" if "error" in metrics else row.cell(metrics)


def _ratio(row: Row, mesh: Metrics, engine: Metrics, litellm: Metrics | None) -> str:
    if "error" in mesh or "error" in engine:
        return "-"
    return row.compare(mesh, engine, litellm if litellm and "error" not in litellm else None)


def checks(results: dict[str, Metrics]) -> list[str]:
    """The issue's targets, each marked met or not, per infermesh column."""
    engine, litellm = results.get("engine", {}), results.get("litellm")
    lines = []
    for name, mesh in results.items():
        if not name.startswith("infermesh") or "error" in mesh:
            continue
        for label, met in _targets(mesh, engine, litellm):
            mark = "n/a " if met is None else ("met " if met else "MISS")
            lines.append(f"- [{mark}] {name}: {label}")
    return lines


def _targets(
    mesh: Metrics, engine: Metrics, litellm: Metrics | None
) -> list[tuple[str, bool | None]]:
    def diff(key: str) -> float | None:
        if mesh.get(key) is None or engine.get(key) is None:
            return None
        return float(mesh[key] - engine[key])

    c1, ttft = diff("c1_p50_ms"), diff("stream_ttft_p50_ms")
    gap = mesh.get("slow_gap_p50_ms")
    rps = mesh.get("c16_rps")
    ratio = rps / litellm["c16_rps"] if rps and litellm and litellm.get("c16_rps") else None
    return [
        ("c16 req/s >= 30x LiteLLM", None if ratio is None else ratio >= 30),
        ("c16 p99 < 20 ms", _below(mesh.get("c16_p99_ms"), 20)),
        ("c1 added p50 < 1 ms", None if c1 is None else c1 < 1),
        ("stream added TTFT p50 < 2 ms", None if ttft is None else ttft < 2),
        (
            "50 ms tokens arrive ~50 ms apart (p50 within 45-60 ms)",
            None if gap is None else 45 <= gap <= 60,
        ),
        ("open streams: RSS < 250 MB", _below(mesh.get("open_peak_rss_mb"), 250)),
        ("open streams: no errors", _open_errors(mesh) == 0),
        (
            "open streams: gateway keeps serving (GET /v1/models p99 < 100 ms)",
            _below(mesh.get("open_models_p99_ms"), 100),
        ),
        ("open streams: new chat requests p99 < 1 s", _below(mesh.get("open_chat_p99_ms"), 1000)),
    ]


def _open_errors(mesh: Metrics) -> int:
    keys = ("open_errors", "open_chat_errors", "open_models_errors")
    return sum(int(mesh.get(key) or 0) for key in keys)


def _below(value: float | None, limit: float) -> bool:
    return value is not None and value < limit


def write_json(
    path: Path,
    *,
    info: dict[str, str],
    args: argparse.Namespace,
    results: dict[str, Metrics],
    table: str,
    checks: list[str],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {
        name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()
    }
    document = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "source": info,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "options": options,
        "results": results,
        "table": table,
        "checks": checks,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
