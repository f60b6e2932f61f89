"""One client IP against what every visitor shares (issue 20), replayed on this machine.

Each attack the issue measured, from one client address and bounded in time, with the
figure the issue asks for beside its bound:

- model spend: anonymous sessions x messages of 4,000 characters (29 x 20 in full) against
  a local OpenAI-compatible server that reports `usage` and counts what it would bill; the
  tokens billed for this one address against MODEL_BUDGET_CLIENT_IP_TOKENS_PER_HOUR plus
  the largest single call (a call reserves its worst case before it is made), and every
  message answered (past the budget by the offline questionnaire, which says why);
- extracted values: every extraction of that run steered into storing implausible numbers
  (1e300 square feet, a labour rate of 1e9, 1e6 hours a month, a headcount past 2**53,
  confidences 1e9 and -3) beside one plausible answer: how many of each were stored;
- rate windows: 240 PUTs of one session in 10 s across a minute's boundary at the default
  120 a minute, and PUT /discovery by one user, as fast as it goes;
- connections: 500 bodies trickled and 500 heads dribbled from one address through the
  production nginx of deploy/nginx, while a second address asks GET /healthz;
- event streams: 200 anonymous identities x 10 streams from one address while a neighbour
  times GET /sessions/me (bench/event_streams.py's round);
- disk: one anonymous visitor filling everything it may own (bench/storage_bounds.py),
  against the bound README "Operations" states.

Prints one table (resource, what one IP did, measured, bound, PASS or FAIL) and exits 1,
naming what broke, when a bound is broken. `--quick` makes each attack smaller and scales
the IP's token budget down to its minimum (well under two minutes, for the test).
Usage: python -m bench.fair_share [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import select
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from autopilot_api.core.config import PROJECT_ROOT, Settings
from autopilot_api.core.security import LOCAL_SUPABASE_ISSUER, mint_user_token
from autopilot_api.discovery.catalogue import QUESTION_KEYS_IN_ORDER, ROI_INPUT_KEYS
from bench.event_streams import (
    METRICS_TOKEN,
    attack_round,
    cookieless_client,
    neighbour_probe,
    new_session,
)
from bench.harness import plane_settings, service_on_fresh_data_plane
from bench.storage_bounds import visitor_figures
from tests.fixtures.factories import SPA_ORIGIN
from tests.fixtures.fake_openai import FakeOpenAIServer, Reply
from tests.fixtures.nginx import EdgeProxy, nginx_tools, start_edge

COOKIE = "autopilot_session"
MESSAGE_CHARS = 4_000
# What the steered extraction tries to store, and one plausible answer that must get through.
STEERED_ANSWERS = {
    "facility_size_sqft": 1e300,
    "floor_headcount": 9_007_199_254_740_993,
    "sku_count": 4_500,
}
STEERED_CONFIDENCE = {"sku_count": 1e9, "facility_size_sqft": -3}
STEERED_ROI = {"laborRate": 1e9, "manualMonthlyHours": 1e6}
PLAUSIBLE = ("shifts_per_day", 2)


@dataclass(frozen=True)
class Figure:
    resource: str
    attack: str
    measured: str
    bound: str
    held: bool


@dataclass(frozen=True)
class Scale:
    sessions: int
    messages: int
    put_burst: int
    slow_connections: int
    stream_identities: int
    wait_for_minute_boundary: bool


FULL = Scale(29, 20, 240, 500, 200, wait_for_minute_boundary=True)
QUICK = Scale(6, 8, 240, 120, 40, wait_for_minute_boundary=False)


def _words(chars: int) -> str:
    words = ["pallet", "shift", "dock", "forklift", "picking", "aisle", "inbound", "zone"]
    text = ""
    while len(text) < chars:
        text += random.choice(words) + " "
    return text[:chars]


def _extraction_payload() -> dict[str, Any]:
    """The strict extraction schema's shape, every key present, steered past every bound."""
    answers: dict[str, Any] = dict.fromkeys(QUESTION_KEYS_IN_ORDER)
    for key, value in {**STEERED_ANSWERS, PLAUSIBLE[0]: PLAUSIBLE[1]}.items():
        answers[key] = {
            "value": value,
            "evidence": "the visitor said so",
            "confidence": STEERED_CONFIDENCE.get(key, 0.9),
        }
    roi = {key: STEERED_ROI.get(key) for key in ROI_INPUT_KEYS}
    return {"answers": answers, "roi_inputs": roi, "confidence": 1e9}


def _responder(request: dict[str, Any]) -> Reply:
    if "response_format" in request:
        return Reply(json_content=_extraction_payload())
    return Reply(text="Thanks. " + _words(600))


# --- model spend and extracted values ------------------------------------------------------


async def _visitor(base_url: str, messages: int) -> dict[str, Any]:
    """One anonymous session of the attacker: a conversation, then message after message."""
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Origin": SPA_ORIGIN}, timeout=120
    ) as http:
        (await http.post("/api/v1/sessions")).raise_for_status()
        created = await http.post("/api/v1/conversations", json={})
        created.raise_for_status()
        path = f"/api/v1/conversations/{created.json()['id']}/messages"
        statuses: Counter[int] = Counter()
        offline: Counter[str] = Counter()
        for _ in range(messages):
            answer = await http.post(path, json={"content": _words(MESSAGE_CHARS)})
            statuses[answer.status_code] += 1
            if answer.status_code == 201:
                metadata = answer.json()["assistantMessage"].get("metadata") or {}
                if metadata.get("mode") == "offline":
                    offline[str(metadata.get("reason"))] += 1
        return {"statuses": statuses, "offline": offline, "cookie": http.cookies.get(COOKIE)}


async def _stored(base_url: str, cookie: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, cookies={COOKIE: cookie}) as http:
        session: dict[str, Any] = (await http.get("/api/v1/sessions/me")).json()
        return session


def _settled(model: FakeOpenAIServer, quiet_seconds: float = 3.0) -> None:
    """Extraction runs after each reply: wait until the model has heard nothing for a while."""
    seen, since = len(model.requests), time.monotonic()
    while time.monotonic() - since < quiet_seconds:
        time.sleep(0.5)
        if len(model.requests) != seen:
            seen, since = len(model.requests), time.monotonic()


def model_and_extraction(scale: Scale, quick: bool) -> list[Figure]:
    model = FakeOpenAIServer().start()
    model.responder = _responder
    env = {
        "OPENAI_API_KEY": "bench-not-a-key",
        "OPENAI_BASE_URL": model.base_url,
        "LOG_LEVEL": "WARNING",
    }
    if quick:
        env["MODEL_BUDGET_CLIENT_IP_TOKENS_PER_HOUR"] = "40000"
    budget = int(
        env.get(
            "MODEL_BUDGET_CLIENT_IP_TOKENS_PER_HOUR",
            Settings.model_fields["model_budget_client_ip_tokens_per_hour"].default,
        )
    )
    try:
        with service_on_fresh_data_plane(**env) as (_, service):
            started = time.perf_counter()

            async def attack() -> list[dict[str, Any]]:
                return await asyncio.gather(
                    *(_visitor(service.base_url, scale.messages) for _ in range(scale.sessions))
                )

            visitors = asyncio.run(attack())
            _settled(model)
            seconds = time.perf_counter() - started

            async def read_back() -> list[dict[str, Any]]:
                return await asyncio.gather(
                    *(_stored(service.base_url, v["cookie"]) for v in visitors)
                )

            stored = asyncio.run(read_back())
    finally:
        model.stop()

    billed = model.billed_tokens
    statuses: Counter[int] = sum((v["statuses"] for v in visitors), Counter())
    offline: Counter[str] = sum((v["offline"] for v in visitors), Counter())
    sent = scale.sessions * scale.messages
    largest = max(billed, default=0)
    described = (
        f"{scale.sessions} anonymous sessions x {scale.messages} messages of "
        f"{MESSAGE_CHARS:,} chars in {seconds:.0f} s"
    )
    figures = [
        Figure(
            "model spend",
            described,
            f"{sum(billed):,} tokens billed for the IP in {len(billed)} model calls",
            f"{budget:,} (IP budget per hour{', scaled down' if quick else ''}) + "
            f"{largest:,} (the largest call) = {budget + largest:,}",
            sum(billed) <= budget + largest,
        ),
        Figure(
            "model spend",
            "the same messages",
            f"{statuses.get(201, 0)}/{sent} answered; past the budget by the offline "
            f"questionnaire: {dict(offline) or 'none'}",
            "every message answered; offline replies say why",
            statuses.get(201, 0) == sent and sum(offline.values()) > 0,
        ),
    ]
    implausible: Counter[str] = Counter()
    plausible = 0
    for session in stored:
        answers, roi = session.get("answers") or {}, session.get("roiInputs") or {}
        for key, value in STEERED_ANSWERS.items():
            entry = answers.get(key)
            if entry is not None and entry.get("value") == value and key != "sku_count":
                implausible[key] += 1
            if (
                entry is not None
                and entry.get("confidence") not in (None,)
                and not (0 <= entry["confidence"] <= 1)
            ):
                implausible[f"{key}.confidence"] += 1
        for key, value in STEERED_ROI.items():
            if roi.get(key) == value:
                implausible[key] += 1
        entry = answers.get(PLAUSIBLE[0])
        plausible += entry is not None and entry.get("value") == PLAUSIBLE[1]
    figures.append(
        Figure(
            "extracted values",
            f"every extraction of that run steered: {', '.join(STEERED_ANSWERS)}, "
            f"{', '.join(STEERED_ROI)}, confidences 1e9 and -3",
            f"implausible values stored: {sum(implausible.values())} "
            f"{dict(implausible) or ''}; the plausible {PLAUSIBLE[0]} stored in "
            f"{plausible}/{len(stored)} sessions",
            "0 implausible stored; the plausible answer stored (extraction ran)",
            not implausible and plausible > 0,
        )
    )
    return figures


# --- rate windows -------------------------------------------------------------------------


async def _put_burst(base_url: str, count: int, seconds: float) -> Counter[int]:
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Origin": SPA_ORIGIN}, timeout=60
    ) as http:
        (await http.post("/api/v1/sessions")).raise_for_status()
        statuses: Counter[int] = Counter()
        started = time.monotonic()
        for index in range(count):
            delay = started + index * seconds / count - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            answer = await http.put("/api/v1/sessions/me", json={"metadata": {"n": index}})
            statuses[answer.status_code] += 1
        return statuses


async def _discovery_burst(base_url: str, settings: Settings, count: int) -> Counter[int]:
    token = mint_user_token(
        settings.supabase_jwt_secret or "",
        issuer=settings.jwt_issuer or LOCAL_SUPABASE_ISSUER,
        user_id=uuid.uuid4(),
        email="burst@example.test",
    )
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        statuses: Counter[int] = Counter()
        for index in range(count):
            answer = await http.put("/api/v1/discovery", json={"timeframe": f"week {index}"})
            statuses[answer.status_code] += 1
        return statuses


def rate_windows(scale: Scale, settings: Settings, base_url: str) -> list[Figure]:
    limit = Settings.model_fields["session_write_limit_per_minute"].default
    write_limit = Settings.model_fields["write_limit_per_minute"].default
    if scale.wait_for_minute_boundary:
        # Start 5 s before the minute turns: a fixed window would take twice the limit.
        time.sleep((55 - time.time() % 60) % 60)
    puts = asyncio.run(_put_burst(base_url, scale.put_burst, 10.0))
    discovery = asyncio.run(_discovery_burst(base_url, settings, 2 * write_limit))
    return [
        Figure(
            "rate windows",
            f"{scale.put_burst} PUT /sessions/me of one session in 10 s"
            + (" across a minute's boundary" if scale.wait_for_minute_boundary else ""),
            f"{puts.get(200, 0)} accepted, {puts.get(429, 0)} refused with 429",
            f"{limit} a minute (SESSION_WRITE_LIMIT_PER_MINUTE, sliding)",
            puts.get(200, 0) <= limit and set(puts) <= {200, 429},
        ),
        Figure(
            "rate windows",
            f"{2 * write_limit} PUT /discovery by one signed-in user, back to back",
            f"{discovery.get(200, 0)} accepted, {discovery.get(429, 0)} refused with 429",
            f"{write_limit} a minute (WRITE_LIMIT_PER_MINUTE)",
            discovery.get(200, 0) <= write_limit and set(discovery) <= {200, 429},
        ),
    ]


# --- connections through the edge ---------------------------------------------------------


def _connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _answer(sock: socket.socket) -> str | None:
    """Without waiting: the status the edge answered on this connection ("closed" when it
    closed without a word), or None while it says nothing."""
    if not select.select([sock], [], [], 0)[0]:
        return None
    try:
        data = sock.recv(65536)
    except OSError:
        return "closed"
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"


def _healthz(edge: EdgeProxy, source: str) -> float | None:
    """Seconds a GET /healthz from `source` took, or None when it was not a 200."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=edge.base_url, transport=transport, timeout=10) as http:
        started = time.perf_counter()
        try:
            ok = http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return None
        return time.perf_counter() - started if ok else None


def _edge_default(name: str) -> str:
    """A setting of deploy/nginx/defaults.env, as the image renders it."""
    for line in (PROJECT_ROOT / "deploy" / "nginx" / "defaults.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    raise KeyError(name)


@contextlib.contextmanager
def _edge(upstream: str) -> Iterator[EdgeProxy]:
    prefix = Path(tempfile.mkdtemp(prefix="autopilot-bench-edge-"))
    edge = start_edge(nginx_tools(), upstream, prefix)
    try:
        yield edge
    finally:
        edge.stop()
        shutil.rmtree(prefix, ignore_errors=True)


def connections(scale: Scale, upstream: str) -> list[Figure]:
    attacker, bystander = "127.0.0.61", "127.0.0.62"
    count = scale.slow_connections
    body_head = (
        f"POST /api/v1/sessions HTTP/1.1\r\nHost: t\r\nOrigin: {SPA_ORIGIN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 64\r\n\r\n{"
    ).encode()
    with _edge(upstream) as edge:
        quiet = [_healthz(edge, bystander) for _ in range(20)]
        bodies = [_connect(edge.port, attacker) for _ in range(count)]
        heads = [_connect(edge.port, attacker) for _ in range(count)]
        for sock in bodies:
            sock.sendall(body_head)
        for sock in heads:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        every = bodies + heads
        answered: dict[int, tuple[str, float]] = {}
        served: list[float | None] = []
        tick = 0
        try:
            # A header byte from each head every second, a body byte every 5 s (within the
            # 10 s nginx allows between two reads of a body), for 15 s: past the header
            # timeout, and long enough to see what the bodies hold.
            while time.monotonic() - started < 15:
                if time.monotonic() >= started + tick:
                    for index in set(range(len(every))) - set(answered):
                        if index < count and tick % 5:
                            continue
                        with contextlib.suppress(OSError):
                            every[index].send(b" " if index < count else b"X")
                    tick += 1
                for index in set(range(len(every))) - set(answered):
                    status = _answer(every[index])
                    if status is not None:
                        answered[index] = (status, time.monotonic() - started)
                served.append(_healthz(edge, bystander))
                time.sleep(0.25)
        finally:
            for sock in every:
                sock.close()
    outcomes = Counter(
        f"{'body' if index < count else 'head'} {status}"
        + (" at once" if seconds < 2 else f" after {seconds:.0f} s")
        for index, (status, seconds) in answered.items()
    )
    held = len(every) - len(answered)
    limit = int(_edge_default("LIMIT_CONN_PER_IP"))
    ok = [value for value in served if value is not None]
    quiet_ok = [value for value in quiet if value is not None]
    quiet_p50 = statistics.median(quiet_ok) * 1000 if quiet_ok else float("nan")
    p50 = statistics.median(ok) * 1000 if ok else float("nan")
    return [
        Figure(
            "connections",
            f"{count} bodies at 1 byte / 5 s and {count} heads dribbled, one address, "
            "through nginx",
            f"the edge answered {dict(sorted(outcomes.items()))}; {held} bodies still "
            f"trickling after 15 s; another address: {len(ok)}/{len(served)} GET 200, p50 "
            f"{p50:.1f} ms (quiet {quiet_p50:.1f} ms)",
            f"another address served in every probe; at most {limit} requests of the "
            "address held (LIMIT_CONN_PER_IP, the rest 429 at once); every head cut at 10 s",
            len(ok) == len(served) > 0
            and held <= limit
            and sum(n for key, n in outcomes.items() if key.startswith("head")) == count,
        )
    ]


# --- event streams ------------------------------------------------------------------------


def streams(scale: Scale, settings: Settings, base_url: str) -> list[Figure]:
    async def run() -> tuple[tuple[float, int, int], dict[str, Any]]:
        async with cookieless_client(base_url, timeout=60) as http:
            _, neighbour_cookie = await new_session(http, "192.0.2.200")
            quiet = await neighbour_probe(base_url, neighbour_cookie)
            round_ = await attack_round(
                base_url,
                http,
                settings,
                name="one IP",
                ips=1,
                identities_per_ip=scale.stream_identities,
                streams_per_identity=10,
                neighbour_cookie=neighbour_cookie,
                fresh_ip="192.0.2.1",
            )
            return quiet, round_

    quiet, round_ = asyncio.run(run())
    neighbour = round_["neighbour GET /sessions/me"]
    ok, total = (int(n) for n in neighbour["200s"].split("/"))
    held = round_["streams held after the flood"]
    signed_in = round_["signed-in user's stream (fresh IP)"]
    visitor = round_["anonymous visitor's stream (fresh IP)"]
    return [
        Figure(
            "event streams",
            f"{scale.stream_identities} anonymous identities x 10 streams from one address",
            f"outcomes {round_['outcomes']}, held {held}; neighbour GET {ok}/{total} 200, "
            f"p50 {neighbour['p50 ms']} ms (quiet {quiet[0]} ms); a signed-in user's and a "
            f"fresh visitor's stream: {signed_in}, {visitor}",
            "neighbour 200 in every probe, p50 <= 2x quiet; others' streams open (200)",
            ok == total > 0
            and neighbour["p50 ms"] <= 2 * quiet[0]
            and signed_in == visitor == "200",
        )
    ]


# --- disk ---------------------------------------------------------------------------------


def disk() -> list[Figure]:
    figures = visitor_figures()
    bound = figures["bound_bytes"]["total"]
    measured = figures["bytes_added_total"]
    return [
        Figure(
            "disk",
            "one anonymous visitor filling all it may own (random content, to the caps) in "
            f"{figures['fill_seconds']} s; refused at the caps with "
            + ", ".join(refusal["code"] for refusal in figures["refusals_at_the_caps"].values()),
            f"{measured / 1e6:.1f} MB stored ({figures['rows']})",
            f'{bound / 1e6:.1f} MB (README "Operations")',
            measured <= bound,
        )
    ]


# --- the run ------------------------------------------------------------------------------


def _table(figures: list[Figure]) -> str:
    lines = []
    for figure in figures:
        lines.append(f"[{'PASS' if figure.held else 'FAIL'}] {figure.resource}: {figure.attack}")
        lines.append(f"       measured: {figure.measured}")
        lines.append(f"       bound:    {figure.bound}")
    return "\n".join(lines)


def run(quick: bool) -> list[Figure]:
    scale = QUICK if quick else FULL
    figures = model_and_extraction(scale, quick)
    env = {
        "TRUSTED_PROXY_IPS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    with service_on_fresh_data_plane(**env) as (plane, service):
        settings = plane_settings(plane)
        figures += rate_windows(scale, settings, service.base_url)
        figures += streams(scale, settings, service.base_url)
        upstream = service.base_url.removeprefix("http://")
        figures += connections(scale, upstream)
    if not quick:
        figures += disk()
    return figures


def main() -> int:
    quick = sys.argv[1:] == ["--quick"]
    if sys.argv[1:] not in ([], ["--quick"]):
        print("usage: python -m bench.fair_share [--quick]", file=sys.stderr)  # noqa: T201
        return 2
    figures = run(quick)
    print(_table(figures))  # noqa: T201
    broken = [f"{f.resource} ({f.attack})" for f in figures if not f.held]
    if broken:
        print(f"fair share: bound broken for {'; '.join(broken)}", file=sys.stderr)  # noqa: T201
        return 1
    print(f"fair share: all {len(figures)} bounds held")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
