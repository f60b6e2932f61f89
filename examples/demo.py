"""`make demo`: the API (local data plane) and the demo SPA on another origin, together.

API on http://127.0.0.1:8000, SPA on http://127.0.0.1:5173; prints a development access
token for the "Sign in & claim" box. Ctrl-C stops both.
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
    api = subprocess.Popen([sys.executable, "-m", "autopilot_api", "serve"], env=env)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SPA_DIR))
    spa = http.server.ThreadingHTTPServer(("127.0.0.1", SPA_PORT), handler)
    threading.Thread(target=spa.serve_forever, daemon=True).start()
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{api_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        token = subprocess.run(
            [sys.executable, "-m", "autopilot_api", "token"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"\n  SPA:   {spa_origin}/index.html?api={api_url}")  # noqa: T201
        print(f"  API:   {api_url}/docs")  # noqa: T201
        print(f"  Token: {token}\n")  # noqa: T201
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
