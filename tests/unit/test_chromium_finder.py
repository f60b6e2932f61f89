"""Where the browser tests find Chromium, and what they say when they cannot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.fixtures.chromium import (
    ANNOUNCEMENT,
    CHROMIUM_ENV,
    ChromiumUnavailableError,
    find_chromium,
)


def never_announced(line: str) -> None:
    raise AssertionError(f"nothing is installed, yet announced: {line}")


def test_chromium_path_wins() -> None:
    found = find_chromium(announce=never_announced, environ={CHROMIUM_ENV: sys.executable})
    assert found == sys.executable


def test_a_chromium_path_that_is_not_executable_says_what_to_do(tmp_path: Path) -> None:
    not_a_browser = tmp_path / "chromium"
    not_a_browser.write_text("")
    with pytest.raises(ChromiumUnavailableError) as refused:
        find_chromium(announce=never_announced, environ={CHROMIUM_ENV: str(not_a_browser)})
    assert f"{CHROMIUM_ENV}={not_a_browser} is not an executable file" in str(refused.value)
    assert "apt-get install chromium" in str(refused.value)


def test_chromium_on_path_is_used(tmp_path: Path) -> None:
    browser = tmp_path / "chromium"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    found = find_chromium(announce=never_announced, environ={"PATH": str(tmp_path)})
    assert found == str(browser)


def test_without_root_nothing_is_installed_and_the_failure_says_what_to_install(
    tmp_path: Path,
) -> None:
    with pytest.raises(ChromiumUnavailableError) as refused:
        find_chromium(announce=never_announced, environ={"PATH": str(tmp_path)}, is_root=False)
    message = str(refused.value)
    assert "needs root" in message
    assert f"uid {os.geteuid()}" in message
    assert "sudo apt-get install chromium" in message
    assert CHROMIUM_ENV in message


def test_without_apt_get_the_failure_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ChromiumUnavailableError) as refused:
        find_chromium(announce=never_announced, environ={"PATH": str(tmp_path)}, is_root=True)
    assert "no apt-get" in str(refused.value)
    assert "apt-get install chromium" in str(refused.value)


def test_as_root_the_install_is_announced_before_apt_get_runs_and_a_failure_explained(
    tmp_path: Path,
) -> None:
    # A stand-in for apt-get that records its calls and fails as apt does for a missing package.
    calls = tmp_path / "apt-calls"
    apt_get = tmp_path / "apt-get"
    apt_get.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        '[ "$1" = install ] && echo "E: Unable to locate package chromium" >&2 && exit 100\n'
        "exit 0\n"
    )
    apt_get.chmod(0o755)
    announced: list[str] = []

    def announce(line: str) -> None:
        assert not calls.exists(), "announced after apt-get started"
        announced.append(line)

    with pytest.raises(ChromiumUnavailableError) as refused:
        find_chromium(announce=announce, environ={"PATH": str(tmp_path)}, is_root=True)
    assert announced == [ANNOUNCEMENT]
    assert "needs root" in ANNOUNCEMENT
    assert "apt-get" in ANNOUNCEMENT
    assert calls.read_text().splitlines() == ["update -q", "install -y -q chromium"]
    message = str(refused.value)
    assert "`apt-get install chromium` failed (exit 100)" in message
    assert "Unable to locate package chromium" in message
    assert CHROMIUM_ENV in message
