"""Prometheus metrics, served at /metrics. Per process: with WORKERS > 1 each worker
exposes its own (scrape each, or run one worker per container)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
MODEL_SECONDS = Histogram(
    "autopilot_model_call_seconds",
    "Time the chat model took to finish a reply.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60),
)
