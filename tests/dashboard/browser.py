"""A real headless Chromium (Debian's ``chromium`` package, driven by Playwright with
``executable_path``: nothing is downloaded) for the dashboard's browser tests, and the
screenshots they take of each page at desktop and phone width (``docs/screenshots/``).

The tests fail when Chromium is missing (``.ci/run`` installs it), unless
``INFERMESH_SKIP_BROWSER=1`` skips them explicitly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

T = TypeVar("T")
SKIP_ENV = "INFERMESH_SKIP_BROWSER"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    """Chromium's executable; fails (or skips, with INFERMESH_SKIP_BROWSER=1) without it."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"browser tests skipped: {SKIP_ENV}=1")
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium is not installed: `apt-get install chromium` (.ci/run does), or set "
            f"{SKIP_ENV}=1 to skip the browser tests explicitly"
        )
    return found


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """Chromium for one test. Playwright's synchronous API runs an event loop on this
    thread while it is open, so a test runs asyncio code in a thread of its own
    (:func:`in_thread`), and the fixture is per test: module fixtures that start
    gateways run before it."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """A page of its own browser context (cookies of its own), with every console error
    and failed request it saw: a page that breaks its CSP logs one."""

    page: Page
    problems: list[str] = field(default_factory=list)

    def watch(self) -> None:
        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.problems.append(f"console: {message.text}")

        self.page.on("console", on_console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on(
            "requestfailed", lambda request: self.problems.append(f"failed: {request.url}")
        )

    def assert_clean(self) -> None:
        assert not self.problems, self.problems

    def shoot(self, name: str) -> None:
        """Screenshots of the current page at desktop and phone width."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page = self.page
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}.png"), full_page=True)
        page.set_viewport_size(DESKTOP)


@pytest.fixture
def tab(chromium: Browser) -> Iterator[Tab]:
    context = chromium.new_context(viewport=DESKTOP)
    try:
        opened = Tab(context.new_page())
        opened.watch()
        yield opened
    finally:
        context.close()


def in_thread(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """The result of the coroutine ``work()`` makes, run to its end on a thread of its
    own (Playwright's loop holds this one)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


def sign_in(tab: Tab, base_url: str, key: str) -> None:
    """Sign in through the form, as a person would."""
    page = tab.page
    page.goto(f"{base_url}/dashboard/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/sign-in" not in url)
