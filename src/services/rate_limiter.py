"""Fixed-window rate limits. In-process by default; a Redis backend shares them across
instances when REDIS_URL is set (see DESIGN.md, scaling out)."""

from __future__ import annotations

import ipaddress
import math
import time
from typing import Protocol

from src.core.errors import RateLimitedError


def client_bucket(ip: str) -> str:
    """IPv6 clients are limited per /64 (one host usually owns the whole /64)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


class RateLimiter(Protocol):
    async def hit(self, *, key: str, limit: int, window_seconds: int) -> None:
        """Count one event; raise RateLimitedError (429 + Retry-After) over the limit."""


class InMemoryRateLimiter:
    """Counters for the current window only, so memory stays bounded by active keys."""

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._window_start: dict[int, int] = {}
        self._counts: dict[tuple[int, str], int] = {}
        self._max_keys = max_keys

    async def hit(self, *, key: str, limit: int, window_seconds: int) -> None:
        now = time.time()
        window = int(now // window_seconds)
        if self._window_start.get(window_seconds) != window:
            self._window_start[window_seconds] = window
            self._counts = {k: v for k, v in self._counts.items() if k[0] != window_seconds}
        slot = (window_seconds, key)
        count = self._counts.get(slot, 0) + 1
        if len(self._counts) < self._max_keys or slot in self._counts:
            self._counts[slot] = count
        if count > limit:
            retry_after = math.ceil((window + 1) * window_seconds - now)
            raise RateLimitedError(retry_after_seconds=retry_after)
