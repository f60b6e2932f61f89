"""Two versions of the service side by side: `python -m bench.ab <other src dir> [rounds]`.

Serves this checkout's code (B) and another checkout's `src` (A, e.g. a `git worktree` of the
commit before a change) on one data plane, and measures GET and PUT /sessions/me on each in
alternating rounds (A B, B A, ...), so that a shared machine whose speed drifts slows both
alike. Prints each round and the medians: req/s, p50, p99 and the service's CPU per request.
BENCH_A_ENV / BENCH_B_ENV add settings to one side ("NAME=value,NAME=value"), e.g. the same
checkout on both sides with `BENCH_A_ENV=DATA_PLANE_TRANSPORT=httpx`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from autopilot_api.local.dataplane import LocalDataPlane
from bench.run import (
    MEMORY_SESSIONS,
    PUT_SCRIPT,
    new_cookie,
    seed_sessions,
    wrk,
    wrk_with_cpu,
)
from bench.wrk_tool import WrkUnavailableError, ensure_wrk
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.processes import start_service


def _side_env(name: str) -> dict[str, str]:
    pairs = [pair for pair in os.environ.get(name, "").split(",") if pair]
    return dict(pair.split("=", 1) for pair in pairs)


def main() -> None:
    try:
        ensure_wrk()
    except WrkUnavailableError as error:
        sys.exit(f"bench: {error}")
    other_src = str(Path(sys.argv[1]).resolve())
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    work = Path(tempfile.mkdtemp(prefix="autopilot-bench-ab-"))
    plane = LocalDataPlane(data_dir=work / "plane", postgrest_pool=20)
    info = plane.start()
    env = {"SESSION_CREATE_LIMIT_PER_HOUR": "100000000", "LOG_LEVEL": "INFO"}
    services = {
        "A": start_service(plane, work, PYTHONPATH=other_src, **env, **_side_env("BENCH_A_ENV")),
        "B": start_service(plane, work, **env, **_side_env("BENCH_B_ENV")),
    }
    try:
        seed_sessions(info.database_url, 1, MEMORY_SESSIONS[0])
        put_script = PUT_SCRIPT.format(origin=SPA_ORIGIN, sessions=MEMORY_SESSIONS[0])
        rows: dict[str, list[dict[str, Any]]] = {}
        for name, service in services.items():
            token = new_cookie(service.base_url)
            cookie = {"Cookie": f"autopilot_session={token}"}
            me = f"{service.base_url}/api/v1/sessions/me"
            wrk(me, headers=cookie, duration="2s")
            calls = {
                "get": lambda me=me, cookie=cookie, s=service: wrk_with_cpu(s, me, headers=cookie),
                "put": lambda me=me, s=service: wrk_with_cpu(s, me, script=put_script),
            }
            for kind, call in calls.items():
                rows.setdefault(f"{kind} {name}", []).append({"call": call})
        for index in range(rounds):
            for kind in ("get", "put"):
                order = ["A", "B"] if index % 2 == 0 else ["B", "A"]
                for name in order:
                    entry = rows[f"{kind} {name}"][0]
                    stats = entry["call"]()
                    entry.setdefault("runs", []).append(stats)
                    print(  # noqa: T201
                        f"round {index} {kind} {name}: {stats['rps']:.0f} req/s "
                        f"p50 {stats['p50_ms']:.1f} p99 {stats['p99_ms']:.1f} "
                        f"cpu {stats['cpu_us_per_req']:.0f} µs/req",
                        flush=True,
                    )
        print(f"\n{'':8} {'req/s':>8} {'p50':>8} {'p99':>8} {'CPU µs/req':>11}")  # noqa: T201
        for label, (entry,) in rows.items():
            runs = entry["runs"]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(  # noqa: T201
                f"{label:8} {med['rps']:>8.0f} {med['p50_ms']:>8.1f} {med['p99_ms']:>8.1f} "
                f"{med['cpu_us_per_req']:>11.0f}"
            )
    finally:
        for service in services.values():
            service.stop()
        plane.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
