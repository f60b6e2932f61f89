"""`make demo`: the API (local data plane) and the demo SPA on another origin, together.

API on http://127.0.0.1:8000 (PORT), SPA on http://127.0.0.1:5173 (SPA_PORT); once the API is
ready, prints the SPA's URL and a development access token for its "Sign in & claim" box, as
one block after the API's start-up lines. Ctrl-C stops both.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

SPA_DIR = Path(__file__).parent / "spa"
API_PORT = int(os.environ.get("PORT", "8000"))
SPA_PORT = int(os.environ.get("SPA_PORT", "5173"))


def _wait_until_ready(api: subprocess.Popen[bytes], api_url: str) -> bool:
    """True once /readyz answers; False as soon as the API process has exited."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if api.poll() is not None:
            return False
        try:
            if httpx.get(f"{api_url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _ready_block(*, spa_url: str, api_url: str, token: str) -> str:
    rule = "=" * 78
    return "\n".join(
        [
            "",
            rule,
            "  The demo is ready. Open the SPA in a browser:",
            "",
            f"    {spa_url}",
            "",
            f"  API docs:  {api_url}/docs",
            "  To sign in and claim the session, paste this development token",
            "  (valid 12 h) into the SPA's 'Sign in & claim' box:",
            "",
            f"    {token}",
            "",
            "  Ctrl-C stops the API and the SPA.",
            rule,
            "",
        ]
    )


def main() -> int:
    api_url = f"http://127.0.0.1:{API_PORT}"
    spa_origin = f"http://127.0.0.1:{SPA_PORT}"
    env = {
        **os.environ,
        "LOCAL_MODE": "true",
        "SESSION_COOKIE_SECURE": "false",
        "CORS_ORIGINS": spa_origin,
        "PORT": str(API_PORT),
    }
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SPA_DIR))
    try:
        spa = http.server.ThreadingHTTPServer(("127.0.0.1", SPA_PORT), handler)
    except OSError as exc:
        print(  # noqa: T201
            f"the SPA's port {SPA_PORT} cannot be bound ({exc.strerror}): "
            f"choose another with SPA_PORT (e.g. SPA_PORT={SPA_PORT + 1} make demo)",
            file=sys.stderr,
        )
        return 2
    threading.Thread(target=spa.serve_forever, daemon=True).start()
    api = subprocess.Popen([sys.executable, "-m", "autopilot_api", "serve"], env=env)
    try:
        if not _wait_until_ready(api, api_url):
            print("the API did not start: see its output above", file=sys.stderr)  # noqa: T201
            return api.poll() or 1
        token = subprocess.run(
            [sys.executable, "-m", "autopilot_api", "token"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        spa_url = f"{spa_origin}/index.html?api={api_url}"
        # Last, after the API's start-up lines: the one thing to read.
        print(_ready_block(spa_url=spa_url, api_url=api_url, token=token), flush=True)  # noqa: T201
        api.wait()
    except KeyboardInterrupt:
        pass
    finally:
        spa.shutdown()
        api.terminate()
        api.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
