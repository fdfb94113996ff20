"""Fixtures of the worker network tests: a gateway with no in-process worker (fast
heartbeats), scripted engines, and a data directory for worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.engine import ScriptedEngine, run_engine
from tests.mesh.helpers import HEARTBEAT, mesh_specs
from tests.support.gateway import RunningGateway, start_gateway


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"]) as running:
        yield running


@pytest.fixture(scope="module")
def slow_engine() -> Iterator[ScriptedEngine]:
    """An engine that takes 0.2 s per token: jobs stay in flight long enough to act on."""
    with run_engine(models=["scripted-1"], chunk_delay=0.2) as running:
        yield running


@pytest.fixture(scope="module")
def mesh_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway that serves only through remote workers."""
    with start_gateway(
        tmp_path_factory.mktemp("mesh-gateway"),
        specs=mesh_specs(),
        embedded_worker=False,
        **HEARTBEAT,
    ) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data directory of worker processes (the tiny model is built there once)."""
    return tmp_path_factory.mktemp("worker-data")
