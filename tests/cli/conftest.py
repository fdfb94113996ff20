"""Fixtures of the command-line tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment without INFERMESH_* settings (so --data-dir decides), wide output."""
    for name in list(os.environ):
        if name.startswith("INFERMESH_") and name != "INFERMESH_SKIP_POSTGRES":
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "200")
    return {**os.environ}
