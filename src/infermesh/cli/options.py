"""Options shared by the CLI commands, and how they become Settings."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from infermesh.config import Settings

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (env INFERMESH_DATA_DIR).", show_default=False),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Database URL, e.g. postgresql+asyncpg://… (env INFERMESH_DATABASE_URL).",
        show_default=False,
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="Model catalog TOML (env INFERMESH_CONFIG).", show_default=False),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def make_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the CLI options that were given on top."""
    return Settings(**{name: value for name, value in overrides.items() if value is not None})


T = TypeVar("T")


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_fast(main: Coroutine[Any, Any, T]) -> T:
    """Run a long-lived service on uvloop where it is installed (uvicorn[standard] brings
    it), else on asyncio's own loop."""
    if installed("uvloop"):
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def freeze_heap() -> None:
    """Move every object alive now (the imported modules: over 100,000 of them) out of
    the garbage collector's sight. A full collection of them took tens of milliseconds,
    a pause that showed as the gateway's p99; what a service allocates later is still
    collected."""
    gc.collect()
    gc.freeze()
