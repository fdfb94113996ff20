"""``infermesh worker``: serve models from this machine to a gateway anywhere."""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from infermesh.catalog.spec import BackendKind, ModelKind, ModelSpec
from infermesh.cli.options import DataDir, freeze_heap, make_settings, run_fast
from infermesh.errors import ConfigError
from infermesh.protocol.wire import Welcome
from infermesh.telemetry import configure_logging
from infermesh.worker.agent import (
    EXIT_REFUSED,
    AgentConfig,
    JobCounts,
    WorkerAgent,
    connect_url,
    serve_spec,
)
from infermesh.worker.agent.config import UPSTREAM_KEY_ENV
from infermesh.worker.host import HostOptions, ModelHost

_JOBS_LINE_EVERY = 1.0


class BackendChoice(StrEnum):
    """The engine a worker runs its models on."""

    openai = "openai"
    transformers = "transformers"


Gateways = Annotated[
    list[str],
    typer.Option(
        "--gateway",
        envvar="INFERMESH_GATEWAY",
        help="A gateway's URL, e.g. https://gateway.example.com. Repeatable (in the "
        "environment: separated by spaces): the worker is connected to one gateway at a "
        "time and moves to the next when it is lost.",
        show_default=False,
    ),
]
Serve = Annotated[
    list[str] | None,
    typer.Option(
        "--serve",
        help="MODEL_ID[=ENGINE_MODEL]: a catalog chat model and the engine's name (openai) "
        "or path/hub id (transformers) for it. Repeatable.",
        show_default=False,
    ),
]
Embed = Annotated[
    list[str] | None,
    typer.Option(
        "--embed",
        help="MODEL_ID[=ENGINE_MODEL]: a catalog embedding model (for /v1/embeddings) and "
        "the engine's name or path/hub id for it, on the same backend. Repeatable; "
        "infermesh-tiny-embed on the transformers backend is the built-in tiny one.",
        show_default=False,
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="INFERMESH_WORKER_TOKEN",
        help="Worker token (from `infermesh workers token create`).",
        show_default=False,
    ),
]
Backend = Annotated[
    BackendChoice | None,
    typer.Option(
        "--backend",
        help="Engine: an OpenAI-compatible server (openai) or in-process (transformers). "
        "Default: openai with --upstream-url, else transformers.",
        show_default=False,
    ),
]
UpstreamUrl = Annotated[
    str | None,
    typer.Option(
        "--upstream-url",
        help="Base URL of the OpenAI-compatible engine, e.g. http://127.0.0.1:8001/v1.",
        show_default=False,
    ),
]
UpstreamKey = Annotated[
    str | None,
    typer.Option(
        "--upstream-key",
        envvar=UPSTREAM_KEY_ENV,
        help="API key of the upstream engine.",
        show_default=False,
    ),
]
Concurrency = Annotated[
    int, typer.Option("--concurrency", min=1, max=4096, help="Jobs per model at once.")
]
Name = Annotated[
    str | None, typer.Option("--name", help="A name shown on the gateway.", show_default=False)
]


def worker(
    gateway: Gateways,
    serve: Serve = None,
    embed: Embed = None,
    token: Token = None,
    backend: Backend = None,
    upstream_url: UpstreamUrl = None,
    upstream_key: UpstreamKey = None,
    concurrency: Concurrency = 4,
    name: Name = None,
    data_dir: DataDir = None,
) -> None:
    """Connect to a gateway of the network and serve its requests for the given models
    (chat models with --serve, embedding models with --embed)."""
    console = Console(stderr=True, soft_wrap=True)
    settings = make_settings(data_dir=data_dir)
    configure_logging(level=settings.log_level)
    if not token:
        _fail(console, "a worker token is needed: --token or INFERMESH_WORKER_TOKEN")
    kind: BackendKind = backend.value if backend else "openai" if upstream_url else "transformers"
    key_env = UPSTREAM_KEY_ENV if upstream_key else None
    try:
        urls = [connect_url(url) for url in gateway]
        specs = _specs(
            {"chat": serve or [], "embedding": embed or []},
            backend=kind,
            upstream_url=upstream_url,
            upstream_key_env=key_env,
        )
    except ConfigError as exc:
        _fail(console, str(exc))
    options = HostOptions(
        models_dir=settings.models_dir,
        max_batch_size=settings.engine_max_batch,
        device=settings.device,
        secrets={UPSTREAM_KEY_ENV: upstream_key} if upstream_key else {},
    )
    host = ModelHost(specs, options)
    config = AgentConfig(
        url=urls[0],
        other_urls=tuple(urls[1:]),
        token=token,
        models={spec.id: concurrency for spec in specs},
        kinds={spec.id: spec.kind for spec in specs},
        name=name,
    )
    agent = WorkerAgent(config, host, ConsoleObserver(console))
    freeze_heap()
    raise typer.Exit(run_fast(agent.run()))


def _specs(
    values: dict[ModelKind, list[str]],
    *,
    backend: BackendKind,
    upstream_url: str | None,
    upstream_key_env: str | None,
) -> list[ModelSpec]:
    """The models of the ``--serve`` (chat) and ``--embed`` (embedding) options."""
    specs = [
        serve_spec(
            value,
            backend=backend,
            upstream_url=upstream_url,
            upstream_key_env=upstream_key_env,
            kind=kind,
        )
        for kind, options in values.items()
        for value in options
    ]
    if not specs:
        raise ConfigError("no model to serve: give --serve or --embed (or both)")
    ids = [spec.id for spec in specs]
    duplicates = sorted({model for model in ids if ids.count(model) > 1})
    if duplicates:
        raise ConfigError(f"--serve and --embed name {', '.join(duplicates)} more than once")
    return specs


def _fail(console: Console, message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(EXIT_REFUSED)


class ConsoleObserver:
    """Shows the agent's state on the terminal, one line per change."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._jobs_line_at = 0.0
        self._counts = JobCounts()
        self._line_due: asyncio.TimerHandle | None = None

    def _say(self, markup: str) -> None:
        self._console.print(markup, highlight=False)

    def starting(self, models: list[str]) -> None:
        self._say(f"starting models: {escape(', '.join(models))}")

    def connecting(self, gateway: str) -> None:
        self._say(f"connecting to {escape(gateway)} ...")

    def registered(self, welcome: Welcome, *, gateway: str) -> None:
        models = escape(", ".join(welcome.accepted))
        node = escape(welcome.node_id)
        self._say(
            f"[green]registered[/green] as node [bold]{node}[/bold] on {escape(gateway)} "
            f"serving {models}"
        )
        for model in welcome.refused:
            self._say(f"[yellow]model {escape(model.id)} refused:[/yellow] {escape(model.reason)}")

    def refused(self, code: str, reason: str, *, fatal: bool) -> None:
        outcome = "; not retrying" if fatal else ""
        self._say(f"[red]refused by the gateway[/red] ({escape(code)}): {escape(reason)}{outcome}")

    def disconnected(self, reason: str, *, gateway: str, retry_in: float | None) -> None:
        then = "trying the next one now" if retry_in is None else f"reconnecting in {retry_in:.1f}s"
        self._say(f"[yellow]gateway {escape(gateway)}: {escape(reason)}[/yellow]; {then}")

    def jobs_changed(self, counts: JobCounts) -> None:
        """A line at most every :data:`_JOBS_LINE_EVERY` seconds (a busy worker changes
        hundreds of times a second); the last change is shown when that time is up."""
        self._counts = counts
        if self._line_due is not None:
            return
        wait = self._jobs_line_at + _JOBS_LINE_EVERY - time.monotonic()
        if wait <= 0:
            self._jobs_line()
        else:
            self._line_due = asyncio.get_running_loop().call_later(wait, self._jobs_line)

    def _jobs_line(self) -> None:
        self._line_due = None
        self._jobs_line_at = time.monotonic()
        counts = self._counts
        self._say(
            f"jobs: {counts.in_flight} in flight, {counts.served} served, {counts.failed} failed"
        )

    def draining(self, in_flight: int) -> None:
        self._say(f"[yellow]draining:[/yellow] no new jobs; waiting for {in_flight} in flight")

    def stopped(self, reason: str) -> None:
        self._say(f"stopped ({escape(reason)})")
