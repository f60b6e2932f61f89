"""An SPA's streaming client leaving at the last word, as it really does it: Node running
`@microsoft/fetch-event-source` against a real service process (the model is the fake
OpenAI server). Aborting right after the last delta, before `done`, must leave exactly one
stored reply per message."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autopilot_api.core.config import PROJECT_ROOT
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import plane_info
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.fake_openai import FakeOpenAIServer, Reply
from tests.fixtures.processes import ServiceProcess, start_service

pytestmark = pytest.mark.slow  # Node and a service process

NODE_DIR = PROJECT_ROOT / ".node"  # git-ignored: npm packages the tests install
PACKAGE = "@microsoft/fetch-event-source@2.0.1"
SCRIPT = Path(__file__).parent / "node" / "abort_before_done.cjs"
CHUNKS = ["Which ", "kind ", "of ", "facility ", "do ", "you ", "run?"]
TRIES = 20


def node_modules() -> Path:
    """The npm package, installed on first use; skips when node or npm is absent."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run @microsoft/fetch-event-source")
    NODE_DIR.mkdir(exist_ok=True)
    installed = NODE_DIR / "node_modules" / "@microsoft" / "fetch-event-source"
    with open(NODE_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed.exists():
            result = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR), PACKAGE],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == 0, f"npm install {PACKAGE} failed: {result.stderr[-2000:]}"
    return NODE_DIR / "node_modules"


@pytest.fixture(scope="module")
def service(
    data_plane: LocalDataPlane,
    fake_openai: FakeOpenAIServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    process = start_service(
        data_plane,
        tmp_path_factory.mktemp("fetch-event-source"),
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_MAX_RETRIES="0",
    )
    try:
        yield process
    finally:
        process.stop()


def stored_replies(plane: LocalDataPlane, conversation_ids: list[str]) -> list[dict[str, str]]:
    """Every assistant reply to a user message in these conversations, straight from PostgREST."""
    info = plane_info(plane)
    response = httpx.get(
        f"{info.rest_url}/messages",
        params={
            "select": "reply_to,status,content",
            "role": "eq.assistant",
            "reply_to": "not.is.null",
            "conversation_id": f"in.({','.join(conversation_ids)})",
        },
        headers={
            "apikey": info.service_role_key,
            "Authorization": f"Bearer {info.service_role_key}",
            "Accept-Profile": "autopilot",
        },
    )
    assert response.status_code == 200, response.text
    rows: list[dict[str, str]] = response.json()
    return rows


def settled_replies(plane: LocalDataPlane, conversation_ids: list[str]) -> list[dict[str, str]]:
    """The replies once every message has one and nothing changed for a second."""
    deadline = time.monotonic() + 15
    previous: list[dict[str, str]] | None = None
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        rows = stored_replies(plane, conversation_ids)
        if rows != previous:
            previous, stable_since = rows, time.monotonic()
        elif len({r["reply_to"] for r in rows}) == len(conversation_ids):
            if time.monotonic() - stable_since > 1.0:
                return rows
        time.sleep(0.1)
    raise AssertionError(f"replies did not settle: {previous}")


def test_aborting_after_the_last_delta_stores_one_reply_per_message(
    service: ServiceProcess, openai_server: FakeOpenAIServer, data_plane: LocalDataPlane
) -> None:
    modules = node_modules()
    openai_server.responder = lambda request: (
        Reply(json_content={"answers": [], "roi_inputs": {}, "confidence": 0})
        if "response_format" in request
        else Reply(chunks=CHUNKS)
    )
    tries = []
    for _ in range(TRIES):
        # One visitor per try, so the per-caller message rate limit stays out of the way.
        with httpx.Client(base_url=service.base_url, headers={"Origin": SPA_ORIGIN}) as http:
            created = http.post("/api/v1/conversations", json={})
            assert created.status_code == 201, created.text
            cookie = f"autopilot_session={http.cookies['autopilot_session']}"
            tries.append({"conversationId": created.json()["id"], "cookie": cookie})
    config = {
        "baseUrl": service.base_url,
        "origin": SPA_ORIGIN,
        "expected": "".join(CHUNKS),
        "tries": tries,
    }
    result = subprocess.run(
        ["node", str(SCRIPT), json.dumps(config)],
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "NODE_PATH": str(modules)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert len(runs) == TRIES
    # The client really left at the last word: every delta arrived, `done` never did.
    assert all(run["text"] == "".join(CHUNKS) for run in runs)
    assert not any("done" in run["events"] for run in runs), runs

    ids = [t["conversationId"] for t in tries]
    rows = settled_replies(data_plane, ids)
    per_message = Counter(row["reply_to"] for row in rows)
    duplicated = sum(1 for count in per_message.values() if count > 1)
    assert duplicated == 0, f"{duplicated} of {TRIES} messages have more than one reply"
    assert len(per_message) == TRIES
    # Whatever the status, the one reply holds every word the visitor saw.
    assert all(row["content"] == "".join(CHUNKS) for row in rows)
