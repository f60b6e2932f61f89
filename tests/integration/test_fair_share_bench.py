"""The fair-share load script (issue 20) in its quick mode, as a user runs it: every attack
from one address, each figure within its bound, the exit status saying so."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autopilot_api.core.config import PROJECT_ROOT

pytestmark = pytest.mark.slow  # several service processes, nginx, a model server


def test_every_bound_holds_in_the_quick_replay() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.fair_share", "--quick"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    print(done.stdout)  # noqa: T201
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    verdicts = [line.split("]")[0] + "]" for line in done.stdout.splitlines() if line[:1] == "["]
    resources = {
        line.split("] ")[1].split(":")[0] for line in done.stdout.splitlines() if line[:1] == "["
    }
    assert resources == {
        "model spend",
        "extracted values",
        "rate windows",
        "connections",
        "event streams",
    }
    assert set(verdicts) == {"[PASS]"}
    assert "Traceback" not in done.stderr
