"""Fixtures of the dashboard tests: a real headless Chromium (see :mod:`.browser`)."""

from __future__ import annotations

from tests.dashboard.browser import chromium, tab

__all__ = ["chromium", "tab"]
