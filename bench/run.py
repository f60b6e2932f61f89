"""`make bench`: the service against its data plane, side by side, in one run.

Brings up the local data plane and the service as `make run` does (production settings:
no reload, access log off, WARNING logs), seeds sessions, and measures with wrk (same
concurrency and duration for every HTTP scenario):
  1. constant endpoint in the same process (GET /healthz)     – the framework's ceiling
  2. PostgREST GET of one session row by token hash           – the data-plane floor
  3. GET  /api/v1/sessions/me with a valid cookie
  4. PUT  /api/v1/sessions/me merging one answer
  5. time to the first streamed byte of a chat reply (instant local model, concurrency 1)
  6. GET /api/v1/sessions/me with 10 and with 1,000,000 session rows
plus resident memory after 1,000 and after 100,000 distinct sessions were served.
Prints a table, writes JSON and a PNG bar chart under .bench/.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from autopilot_api.core.config import PROJECT_ROOT
from autopilot_api.local.dataplane import LocalDataPlane
from bench.stream_ttfb import measure as measure_ttfb
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.fake_openai import FakeOpenAIServer
from tests.fixtures.processes import ServiceProcess, start_service

OUT_DIR = PROJECT_ROOT / ".bench"
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
WORKERS = os.environ.get("BENCH_WORKERS", "2")
BIG_TABLE_ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
MEMORY_SESSIONS = (1_000, int(os.environ.get("BENCH_MEMORY_SESSIONS", "100000")))

# Visitors each merge into their own session (rotating over 1,000 seeded ones): 32
# connections on one row would measure the row lock held through each commit's fsync.
PUT_SCRIPT = """
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Origin"] = "{origin}"
local n = 0
request = function()
  n = n + 1
  wrk.headers["Cookie"] = string.format("autopilot_session=%064d", 1 + n % {sessions})
  local body = string.format('{{"answers": {{"sku_count": {{"value": %d}}}}}}', n)
  return wrk.format(nil, nil, nil, body)
end
"""

# Distinct sessions, one per request: cookie tokens are the zero-padded index.
DISTINCT_SCRIPT = """
local n = {start}
request = function()
  n = n + 1
  if n > {stop} then n = {start} + 1 end
  wrk.headers["Cookie"] = string.format("autopilot_session=%064d", n)
  return wrk.format(nil, nil, nil, nil)
end
"""


def wrk(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    script: str | None = None,
    duration: str = DURATION,
    connections: int = CONNECTIONS,
) -> dict[str, float]:
    args = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{duration}", "--latency"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    script_file = None
    if script is not None:
        script_file = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
        script_file.write(script)
        script_file.close()
        args += ["-s", script_file.name]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if script_file is not None:
        os.unlink(script_file.name)
    return parse_wrk(out)


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value.strip()).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def seed_sessions(database_url: str, start: int, stop: int) -> None:
    """Sessions whose cookie token is the zero-padded index (bench data only)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            """insert into autopilot.sessions (token_hash, expires_at, last_seen_at)
               select encode(sha256(convert_to(lpad(i::text, 64, '0'), 'UTF8')), 'hex'),
                      now() + interval '30 days', now()
                 from generate_series(%s::bigint, %s::bigint) as i
               on conflict (token_hash) do nothing""",
            (start, stop),
        )
        conn.execute("analyze autopilot.sessions")


def session_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select count(*) from autopilot.sessions").fetchone()
    return int(row[0]) if row else 0


def resident_kib(service: ServiceProcess) -> int:
    """Resident memory of the service: the server process and its workers."""
    pids = [service.process.pid]
    children = Path(f"/proc/{service.process.pid}/task/{service.process.pid}/children")
    if children.exists():
        pids += [int(pid) for pid in children.read_text().split()]
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total


def new_cookie(base_url: str) -> str:
    response = httpx.post(f"{base_url}/api/v1/sessions", headers={"Origin": SPA_ORIGIN})
    response.raise_for_status()
    return str(response.cookies["autopilot_session"])


def run() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="autopilot-bench-"))
    plane = LocalDataPlane(data_dir=work / "plane", postgrest_pool=20)
    info = plane.start()
    model = FakeOpenAIServer().start()
    model.instant("Sure, let's look at your facility.")
    service = start_service(
        plane,
        work,
        OPENAI_API_KEY="bench",
        OPENAI_BASE_URL=model.base_url,
        WORKERS=WORKERS,
        SESSION_CREATE_LIMIT_PER_HOUR="100000000",
        MESSAGE_RATE_LIMIT_PER_MINUTE="100000000",
        LOG_LEVEL="WARNING",
    )
    results: dict[str, Any] = {
        "connections": CONNECTIONS,
        "duration": DURATION,
        "workers": int(WORKERS),
        "cores": os.cpu_count(),
    }
    try:
        base = service.base_url
        token = new_cookie(base)
        token_hash = hashlib.sha256(token.encode()).hexdigest()
        cookie = {"Cookie": f"autopilot_session={token}"}
        rest_headers = {
            "apikey": info.service_role_key,
            "Authorization": f"Bearer {info.service_role_key}",
        }
        wrk(f"{base}/api/v1/sessions/me", headers=cookie, duration="2s")  # warm-up

        results["1_constant"] = wrk(f"{base}/healthz")
        results["2_postgrest_floor"] = wrk(
            f"{info.rest_url}/sessions?token_hash=eq.{token_hash}", headers=rest_headers
        )
        results["3_get_session"] = wrk(f"{base}/api/v1/sessions/me", headers=cookie)
        seed_sessions(info.database_url, 1, MEMORY_SESSIONS[0])
        results["4_put_session"] = wrk(
            f"{base}/api/v1/sessions/me",
            script=PUT_SCRIPT.format(origin=SPA_ORIGIN, sessions=MEMORY_SESSIONS[0]),
        )
        results["5_stream_first_byte"] = asyncio.run(measure_ttfb(base, 50))

        results["6_get_at_small_table"] = {
            **wrk(f"{base}/api/v1/sessions/me", headers=cookie),
            "rows": session_rows(info.database_url),
        }
        seed_sessions(info.database_url, 1, MEMORY_SESSIONS[1])
        wrk(
            f"{base}/api/v1/sessions/me",
            script=DISTINCT_SCRIPT.format(start=0, stop=MEMORY_SESSIONS[0]),
            duration="3s",
        )
        after_small = resident_kib(service)
        served = 0
        while served < MEMORY_SESSIONS[1]:
            stats = wrk(
                f"{base}/api/v1/sessions/me",
                script=DISTINCT_SCRIPT.format(start=served, stop=MEMORY_SESSIONS[1]),
                duration="5s",
            )
            served += int(stats["rps"] * 5)
        after_large = resident_kib(service)
        results["memory"] = {
            "rss_kib_after_1k": after_small,
            "rss_kib_after_100k": after_large,
            "growth": after_large / after_small,
        }

        seed_sessions(info.database_url, MEMORY_SESSIONS[1] + 1, BIG_TABLE_ROWS)
        results["6_get_at_large_table"] = {
            **wrk(f"{base}/api/v1/sessions/me", headers=cookie),
            "rows": session_rows(info.database_url),
        }
    finally:
        service.stop()
        model.stop()
        plane.stop()
        shutil.rmtree(work, ignore_errors=True)

    floor = results["2_postgrest_floor"]["rps"]
    results["ratios"] = {
        "get_vs_floor (3/2)": results["3_get_session"]["rps"] / floor,
        "put_vs_floor (4/2)": results["4_put_session"]["rps"] / floor,
        "p50_1M_vs_small (6)": results["6_get_at_large_table"]["p50_ms"]
        / results["6_get_at_small_table"]["p50_ms"],
    }
    return results


def report(results: dict[str, Any]) -> str:
    lines = [f"{'scenario':32} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9}"]
    for key in (
        "1_constant",
        "2_postgrest_floor",
        "3_get_session",
        "4_put_session",
        "6_get_at_small_table",
        "6_get_at_large_table",
    ):
        row = results[key]
        label = key if "rows" not in row else f"{key} ({int(row['rows']):,} rows)"
        lines.append(f"{label:32} {row['rps']:>10.0f} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f}")
    ttfb = results["5_stream_first_byte"]
    lines.append(
        f"{'5_stream_first_byte (c=1)':32} {'':>10} {ttfb['first_byte_p50_ms']:>9.2f} "
        f"{ttfb['first_byte_p99_ms']:>9.2f}"
    )
    lines.append("")
    for name, value in results["ratios"].items():
        lines.append(f"{name:32} {value:>10.2f}")
    memory = results["memory"]
    lines.append(
        f"{'RSS after 1k / 100k sessions':32} {memory['rss_kib_after_1k']:>9} KiB "
        f"{memory['rss_kib_after_100k']:>9} KiB  (x{memory['growth']:.2f})"
    )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        "1_constant",
        "2_postgrest_floor",
        "3_get_session",
        "4_put_session",
        "6_get_at_small_table",
        "6_get_at_large_table",
    ]
    labels = [
        "constant",
        "PostgREST\nfloor",
        "GET\n/sessions/me",
        "PUT\n/sessions/me",
        "GET\n(small table)",
        "GET\n(1M rows)",
    ]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.bar(labels, [results[k]["rps"] for k in keys], color="#4C72B0")
    left.set_title(f"Requests/s ({CONNECTIONS} connections, {DURATION})")
    right.bar(labels, [results[k]["p50_ms"] for k in keys], color="#55A868", label="p50")
    right.bar(
        labels,
        [results[k]["p99_ms"] - results[k]["p50_ms"] for k in keys],
        bottom=[results[k]["p50_ms"] for k in keys],
        color="#C44E52",
        label="p99",
    )
    right.set_title("Latency (ms)")
    right.legend()
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (make bench installs it)")
    results = run()
    OUT_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT_DIR / f"results-{stamp}.json").write_text(json.dumps(results, indent=2))
    chart(results, OUT_DIR / f"chart-{stamp}.png")
    print(report(results))  # noqa: T201
    print(f"\nwritten: .bench/results-{stamp}.json, .bench/chart-{stamp}.png")  # noqa: T201


if __name__ == "__main__":
    main()
