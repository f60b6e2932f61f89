"""The README's "Try it with curl" block, run as a reader runs it: bash and the real curl
against a running service, so the walk-through cannot go stale."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autopilot_api.core.config import PROJECT_ROOT
from autopilot_api.core.security import LOCAL_SUPABASE_ISSUER
from autopilot_api.local.dataplane import LocalDataPlane
from tests.fixtures.processes import ServiceProcess, start_service

SECTION = "## Try it with curl"


def walkthrough() -> str:
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert SECTION in readme, "the README lost its curl walk-through"
    match = re.search(r"```sh\n(.*?)```", readme[readme.index(SECTION) :], re.S)
    assert match is not None
    return match.group(1)


@pytest.fixture
def service(
    data_plane: LocalDataPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    # No OPENAI_API_KEY: the agent runs offline, as it does after a plain `make run`. The
    # issuer `token` puts in its tokens when none is configured (make run checks none).
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("walkthrough"),
        SUPABASE_JWT_ISSUER=LOCAL_SUPABASE_ISSUER,
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def reader_dir(tmp_path: Path) -> Path:
    """A checkout as the block sees it: `.venv/bin/autopilot-api` relative to it, and no
    `.env` of the developer running the tests."""
    script = Path(sys.executable).parent / "autopilot-api"
    assert script.exists(), f"{script} missing: the project is not installed in this venv"
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "autopilot-api").symlink_to(script)
    return tmp_path


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _sse_events(stdout: str) -> list[tuple[str, dict[str, Any]]]:
    pairs = re.findall(r"^event: (\w+)\ndata: (.*)$", stdout, re.M)
    return [(kind, json.loads(data)) for kind, data in pairs]


def test_the_readme_curl_walkthrough_runs_as_written(
    service: ServiceProcess, data_plane: LocalDataPlane, reader_dir: Path
) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "the walk-through needs curl (apt-get install curl)"
    assert data_plane.info is not None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(reader_dir),
        "API": service.base_url,
        # `token` as after `make run`: no SUPABASE_URL (it refuses then), the local secret,
        # here the test plane's (the service verifies tokens with it).
        "SUPABASE_JWT_SECRET": data_plane.info.jwt_secret,
        "LOCAL_DATA_DIR": str(reader_dir / ".local"),
    }
    # -e -u -o pipefail: any failing step (curl --fail-with-body on a 4xx/5xx) fails the run.
    result = subprocess.run(
        ["bash", "-e", "-u", "-o", "pipefail", "-c", walkthrough()],
        cwd=reader_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    # 4: the opening message (on stderr) asks the first question the PUT left open.
    assert result.stderr.strip().endswith("Where is the facility located (city and region)?")

    created, read, updated, turn, claim, profile = _json_lines(result.stdout)
    # 1, 2: the session the cookie names, read back at version 1.
    assert (created["id"], created["version"], created["answers"]) == (read["id"], 1, {})
    assert re.search(r'^ETag: "v1"$', result.stdout, re.M)
    # 3: the conditional PUT merged both answers as the visitor's own.
    assert updated["version"] == 2
    assert {key: a["value"] for key, a in updated["answers"].items()} == {
        "facility_type": "warehouse / distribution center",
        "facility_size_sqft": 120000,
    }
    # 4, 5: a conversation of that session; the offline agent asks the next question.
    conversation = re.search(r"^Conversation: ([0-9a-f-]{36})$", result.stdout, re.M)
    assert conversation is not None
    assert turn["userMessage"]["conversationId"] == conversation.group(1)
    assert turn["assistantMessage"]["content"] == "How many sites or facilities do you operate?"
    # 6: the same over SSE, ending with the saved reply.
    events = _sse_events(result.stdout)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"}
    streamed = "".join(data["text"] for kind, data in events if kind == "delta")
    assert events[-1][1]["message"]["content"] == streamed
    # 8: claimed into a profile, conversation moved.
    assert claim["claimedSessionId"] == created["id"]
    assert (claim["alreadyClaimed"], claim["dryRun"], claim["conversationsMoved"]) == (
        False,
        False,
        1,
    )
    # 9: the profile holds every answer: two from the PUT, one per message.
    assert profile["profileId"] == claim["profile"]["profileId"]
    answers = {key: a["value"] for key, a in profile["answers"].items()}
    assert answers == {
        "facility_type": "warehouse / distribution center",
        "facility_size_sqft": 120000,
        "facility_location": "Rotterdam, South Holland",
        "number_of_sites": 3,
    }
