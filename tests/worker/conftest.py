"""Fixtures for the worker tests: the tiny model, built once per session, and a backend on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infermesh.worker.backends.transformers import TransformersBackend
from infermesh.worker.tiny import ensure_tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built offline into a session temporary directory."""
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture
async def tiny_backend(tiny_model_path: Path) -> AsyncIterator[TransformersBackend]:
    """A started :class:`TransformersBackend` serving the tiny model on the CPU."""
    backend = TransformersBackend([str(tiny_model_path)], device="cpu", max_batch_size=8)
    await backend.start()
    yield backend
    await backend.close()
