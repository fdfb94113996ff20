"""``infermesh models``: the catalog file (list, add, remove)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Column, Table

from infermesh.billing.money import format_usd
from infermesh.billing.pricing import Pricing
from infermesh.catalog.spec import BackendKind, ModelKind, ModelSpec, ServeSpec
from infermesh.catalog.store import CatalogFile
from infermesh.cli.options import ConfigFile, DataDir, JsonOutput, make_settings
from infermesh.errors import ConfigError
from infermesh.protocol.models import Capabilities

models_app = typer.Typer(help="The model catalog.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def _catalog(data_dir: DataDir, config: ConfigFile) -> CatalogFile:
    return CatalogFile(make_settings(data_dir=data_dir, config=config).catalog_path)


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


@models_app.command("list")
def list_models(
    data_dir: DataDir = None, config: ConfigFile = None, json_output: JsonOutput = False
) -> None:
    """List the models in the catalog."""
    try:
        specs = _catalog(data_dir, config).load_or_default()
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if json_output:
        typer.echo(json.dumps([spec.model_dump(exclude_none=True) for spec in specs], indent=2))
        return
    table = Table(
        "tier", "params", "context", "tools", "vision", "price", "backend", "engine model"
    )
    table.columns.insert(0, Column("id", no_wrap=True))
    for spec in specs:
        serve = spec.serve
        table.add_row(
            spec.id,
            spec.tier,
            spec.params or "",
            str(spec.context_length),
            "yes" if spec.capabilities.tools else "",
            "yes" if spec.capabilities.vision else "",
            _price(spec.pricing),
            serve.backend if serve else "(remote workers)",
            (serve.engine_model if serve else "")
            + (f" @ {serve.upstream_url}" if serve and serve.upstream_url else ""),
        )
    console.print(table)


@models_app.command("add")
def add_model(
    model_id: Annotated[str, typer.Argument(help="The id clients use, e.g. qwen2.5-7b.")],
    backend: Annotated[
        str | None, typer.Option(help="transformers or openai; omit for remote workers only.")
    ] = None,
    engine_model: Annotated[
        str | None, typer.Option(help="Path or hub id (transformers) or the upstream's model name.")
    ] = None,
    upstream_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible URL ending in /v1.")
    ] = None,
    upstream_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the upstream key.")
    ] = None,
    tier: Annotated[str, typer.Option(help="fast, frontier, special, or any name.")] = "fast",
    params: Annotated[str | None, typer.Option(help='Size, e.g. "7B".')] = None,
    description: Annotated[str | None, typer.Option()] = None,
    context_length: Annotated[int, typer.Option(help="Context window in tokens.")] = 4096,
    tools: Annotated[bool, typer.Option("--tools/--no-tools", help="Accepts tools.")] = False,
    vision: Annotated[bool, typer.Option("--vision/--no-vision", help="Accepts images.")] = False,
    price_request: Annotated[
        str | None, typer.Option(help='USD per request (flat), e.g. "0.10".')
    ] = None,
    price_input: Annotated[str | None, typer.Option(help="USD per million prompt tokens.")] = None,
    price_output: Annotated[
        str | None, typer.Option(help="USD per million completion tokens.")
    ] = None,
    price_minimum: Annotated[str | None, typer.Option(help="USD charged at least.")] = None,
    replace: Annotated[bool, typer.Option(help="Replace a model with the same id.")] = False,
    kind: Annotated[
        str, typer.Option(help="chat, or embedding (served on /v1/embeddings).")
    ] = "chat",
    dimensions: Annotated[
        int | None, typer.Option(help="An embedding model's vector length (required for one).")
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Add a model to the catalog (takes effect on the next start of the gateway).

    Without any --price-* option the model is free; an embedding model is priced with
    --price-input (per million input tokens).
    """
    prices = {
        "per_request": price_request,
        "input_per_million": price_input,
        "output_per_million": price_output,
        "minimum": price_minimum,
    }
    try:
        given = {name: value for name, value in prices.items() if value is not None}
        pricing = Pricing.model_validate(given) if given else None
        serve = None
        if backend is not None:
            serve = ServeSpec(
                backend=_backend(backend),
                engine_model=engine_model or model_id,
                upstream_url=upstream_url,
                upstream_key_env=upstream_key_env,
            )
        spec = ModelSpec(
            id=model_id,
            tier=tier,
            params=params,
            description=description,
            context_length=context_length,
            capabilities=Capabilities(tools=tools, vision=vision),
            pricing=pricing,
            serve=serve,
            kind=_kind(kind),
            dimensions=dimensions,
        )
        if spec.kind == "embedding" and spec.dimensions is None:
            raise ConfigError("an embedding model needs --dimensions (the length of its vectors)")
        _catalog(data_dir, config).add(spec, replace=replace)
    except (ValidationError, ConfigError) as exc:
        raise _fail(str(exc)) from None
    errors.print(f"added [bold]{model_id}[/bold]; restart the gateway to serve it")


@models_app.command("remove")
def remove_model(
    model_id: Annotated[str, typer.Argument()], data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Remove a model from the catalog."""
    try:
        _catalog(data_dir, config).remove(model_id)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    errors.print(f"removed [bold]{model_id}[/bold]")


def _price(pricing: Pricing | None) -> str:
    """A short price, e.g. ``$0.1/req`` or ``$0.5/$1.5 per M``."""
    if pricing is None or pricing.free:
        return "free"
    parts = []
    if pricing.per_request:
        parts.append(f"${format_usd(pricing.per_request)}/req")
    if pricing.input_per_million or pricing.output_per_million:
        parts.append(
            f"${format_usd(pricing.input_per_million)}/${format_usd(pricing.output_per_million)}"
            " per M"
        )
    if pricing.minimum:
        parts.append(f"min ${format_usd(pricing.minimum)}")
    return " + ".join(parts)


def _kind(name: str) -> ModelKind:
    if name == "chat":
        return "chat"
    if name == "embedding":
        return "embedding"
    raise ConfigError(f"unknown kind '{name}': use chat or embedding")


def _backend(name: str) -> BackendKind:
    if name == "transformers":
        return "transformers"
    if name == "openai":
        return "openai"
    raise ConfigError(f"unknown backend '{name}': use transformers or openai")
