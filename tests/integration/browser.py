"""Debian's chromium, headless, driven by Playwright: for the tests that need what only a
real browser does (the dashboard, and what a page on another site may send)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the tests are skipped, saying what to install
    sync_playwright = None

if TYPE_CHECKING:
    from harness import Cluster
    from playwright.sync_api import Browser

CHROMIUM = os.environ.get("CHRONOSYNC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@contextmanager
def chromium(*extra_args: str) -> Iterator[Browser]:
    """A launched browser, closed on the way out; skips the test when there is none."""
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's chromium with no extra flags (a test module may define its own)."""
    with chromium() as launched:
        yield launched


def signed_in_api(token: str) -> Callable[..., Any]:
    """``api(cluster, method, path, body=None)``: the API as the signed-in user calls it,
    failing the test on any answer but a 2xx."""
    headers = {"Authorization": f"Bearer {token}"}

    def api(cluster: Cluster, method: str, path: str, body: Any = None) -> Any:
        status, answer = cluster.http(method, path, body, headers=headers)
        assert 200 <= status < 300, (method, path, status, answer)
        return answer

    return api
