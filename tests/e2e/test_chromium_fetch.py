"""On a machine without Chromium the browser tests fetch one into the repository's `.tools/`
(Debian's package, unpacked: never installed), and nothing outside the repository changes."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from autopilot_api.core.config import PROJECT_ROOT
from tests.fixtures.browser import launch_chromium
from tests.fixtures.chromium import TOOLS_CHROMIUM, find_chromium

pytestmark = pytest.mark.slow  # fetches Chromium

# What an install would change: dpkg's database, apt's lists and cache, the system's folders.
WATCHED_FILES = [Path("/var/lib/dpkg/status"), Path("/var/lib/apt/extended_states")]
WATCHED_FOLDERS = [
    Path("/usr/bin"),
    Path("/usr/lib"),
    Path("/var/lib/apt/lists"),
    Path("/var/cache/apt/archives"),
]


def _host_state() -> dict[str, object]:
    state: dict[str, object] = {}
    for path in WATCHED_FILES:
        state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    for folder in WATCHED_FOLDERS:
        state[str(folder)] = (
            sorted((entry.name, entry.stat().st_mtime_ns) for entry in folder.iterdir())
            if folder.exists()
            else None
        )
    packages = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}\n"],
        capture_output=True,
        text=True,
        check=False,
    )
    state["packages"] = packages.stdout
    return state


def test_a_machine_without_chromium_fetches_it_into_the_repository(tmp_path: Path) -> None:
    announced: list[str] = []
    before = _host_state()
    # No CHROMIUM_PATH, a PATH without any browser, a HOME without Playwright's cache.
    browser = find_chromium(
        announce=announced.append,
        environ={"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)},
    )
    assert before == _host_state(), "something outside the repository changed"
    assert Path(browser) == TOOLS_CHROMIUM / "chromium"
    assert Path(browser).resolve().is_relative_to(PROJECT_ROOT)
    if announced:  # fetched now (else by an earlier run): said before it started
        assert "apt-get download" in announced[0]
        assert "nothing is installed on the system" in announced[0]
    # The fetched browser runs: Playwright drives it through a page.
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright, browser)
        try:
            page = chromium.new_page()
            page.set_content("<p id=greeting>hello</p>")
            assert page.inner_text("#greeting") == "hello"
            assert page.evaluate("navigator.userAgent").find("Chrome/") > 0
        finally:
            chromium.close()
