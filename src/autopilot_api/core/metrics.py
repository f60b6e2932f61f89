"""Prometheus metrics: what is counted, who may read it, and one exposition for all workers.

`autopilot-api serve` runs in Prometheus multiprocess mode (core/metrics_export.py): every
worker writes to one folder and a scrape of any worker sees them all. Without it (the app
built in-process, as the tests do) a scrape sees this process.

Who may scrape /metrics on the API port: a `METRICS_TOKEN` bearer; in local mode anyone on
the loopback; nobody else (404, so the API does not advertise it). METRICS_PORT serves it
on a port of its own, for the operators' network.
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import NotFoundError, UnauthorizedError
from autopilot_api.core.metrics_export import MULTIPROC_ENV

REQUESTS = Counter(
    "autopilot_http_requests_total", "HTTP requests answered.", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "autopilot_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SESSIONS_CREATED = Counter("autopilot_sessions_created_total", "Anonymous sessions created.")
CLAIMS = Counter("autopilot_claims_total", "Sessions claimed into a profile.")
EXTRACTIONS = Counter("autopilot_extractions_total", "Profile extraction runs.", ["outcome"])
EVENT_READS = Counter(
    "autopilot_event_reads_total",
    "Reads of new events by live-stream feeds (one per subject per wake-up, not per stream).",
)
EVENT_STREAMS_OPEN = Gauge(
    "autopilot_event_streams_open",
    "Live event streams held, by kind of caller (anonymous, signed_in).",
    ["kind"],
    multiprocess_mode="livesum",
)
EVENT_STREAMS_REFUSED = Counter(
    "autopilot_event_streams_refused_total",
    "Live event streams refused, by the cap that refused them (ip, anonymous, instance).",
    ["cap"],
)
EVENT_STREAMS_CUT = Counter(
    "autopilot_event_streams_cut_total",
    "Live event streams the server ended early: replaced by a newer stream of their subject, "
    "lagging too far behind it, or stalled (their client read nothing within the deadline).",
    ["reason"],
)
MODEL_SECONDS = Histogram(
    "autopilot_model_call_seconds",
    "Time the chat model took to finish a reply.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60),
)

# Model spend. Token counts under OpenTelemetry's GenAI semantic-convention names
# (gen_ai.client.token.usage, a histogram in {token}, with the spec's bucket boundaries):
# gen_ai_operation_name is the spec's "chat" for both calls (each is a chat completion);
# which of ours it was, and the owner's phase, are the autopilot_ labels.
GEN_AI_TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per model call as the model reported them (gen_ai.client.token.usage).",
    [
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_token_type",
        "autopilot_operation",
        "autopilot_phase",
    ],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
)
MODEL_COST_USD = Counter(
    "autopilot_model_cost_usd",
    "Estimated model cost in USD: reported tokens at the MODEL_*_USD_PER_MILLION_TOKENS prices.",
    ["gen_ai_request_model", "autopilot_operation"],
)
MODEL_BUDGET_REFUSALS = Counter(
    "autopilot_model_budget_refusals",
    "Model calls not made: a token budget was spent (or its store unreachable: unavailable).",
    ["budget", "autopilot_operation"],
)


def render_metrics() -> bytes:
    """The text exposition: every worker's values added up in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def mark_worker_exited() -> None:
    """A worker going away drops its live gauges (its counters stay in the totals)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _is_loopback(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_scrape_access(*, settings: Settings, client_host: str | None, authorization: str) -> None:
    """Raises unless this caller may read /metrics on the API port."""
    if settings.local_mode and _is_loopback(client_host):
        return
    if settings.metrics_token is None:
        raise NotFoundError()
    scheme, _, credential = authorization.partition(" ")
    expected = settings.metrics_token.get_secret_value().encode()
    # Constant time: the comparison must not tell how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), expected):
        raise UnauthorizedError(
            "A valid METRICS_TOKEN bearer token is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
