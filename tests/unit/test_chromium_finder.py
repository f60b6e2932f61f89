"""Where the browser tests find Chromium, in order, before fetching one (the fetch itself:
tests/e2e/test_chromium_fetch.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.fixtures.chromium import CHROMIUM_ENV, ChromiumUnavailableError, find_chromium


def never_announced(line: str) -> None:
    raise AssertionError(f"nothing is fetched, yet announced: {line}")


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_chromium_path_wins(tmp_path: Path) -> None:
    found = find_chromium(
        announce=never_announced,
        environ={CHROMIUM_ENV: sys.executable},
        tools_dir=tmp_path / "tools",
    )
    assert found == sys.executable


def test_a_chromium_path_that_is_not_executable_says_what_to_do(tmp_path: Path) -> None:
    not_a_browser = tmp_path / "chromium"
    not_a_browser.write_text("")
    with pytest.raises(ChromiumUnavailableError) as refused:
        find_chromium(
            announce=never_announced,
            environ={CHROMIUM_ENV: str(not_a_browser)},
            tools_dir=tmp_path / "tools",
        )
    assert f"{CHROMIUM_ENV}={not_a_browser} is not an executable file" in str(refused.value)
    assert "put `chromium` on PATH" in str(refused.value)


@pytest.mark.parametrize("name", ["chromium", "google-chrome"])
def test_a_browser_on_path_is_used(tmp_path: Path, name: str) -> None:
    browser = _executable(tmp_path / "bin" / name)
    found = find_chromium(
        announce=never_announced,
        environ={"PATH": str(browser.parent)},
        tools_dir=tmp_path / "tools",
    )
    assert found == str(browser)


def test_playwrights_cache_is_used(tmp_path: Path) -> None:
    chrome = _executable(tmp_path / "home/.cache/ms-playwright/chromium-1200/chrome-linux/chrome")
    found = find_chromium(
        announce=never_announced,
        environ={"PATH": str(tmp_path / "empty"), "HOME": str(tmp_path / "home")},
        tools_dir=tmp_path / "tools",
    )
    assert found == str(chrome)


def test_a_browser_fetched_before_is_used_without_fetching_again(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    wrapper = _executable(tools / "chromium")
    (tools / ".complete").write_text("chromium chromium-common\n")
    found = find_chromium(
        announce=never_announced,
        environ={"PATH": str(tmp_path / "empty"), "HOME": str(tmp_path)},
        tools_dir=tools,
    )
    assert found == str(wrapper)
