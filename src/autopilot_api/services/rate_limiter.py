"""Fixed-window rate limits. In-process by default; a Redis backend shares them across
instances when REDIS_URL is set (see DESIGN.md, scaling out)."""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from typing import Protocol

from autopilot_api.core.errors import RateLimitedError

logger = logging.getLogger(__name__)


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

    async def close(self) -> None: ...


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

    async def close(self) -> None:
        return None


class RedisRateLimiter:
    """The same fixed windows, counted in Redis so every instance shares them."""

    def __init__(self, redis_url: str) -> None:
        from redis import asyncio as redis_asyncio

        self._redis = redis_asyncio.from_url(redis_url, socket_connect_timeout=3)

    async def hit(self, *, key: str, limit: int, window_seconds: int) -> None:
        now = time.time()
        window = int(now // window_seconds)
        redis_key = f"autopilot:ratelimit:{window_seconds}:{window}:{key}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(redis_key)
                pipe.expire(redis_key, window_seconds + 5)
                count, _ = await pipe.execute()
        except Exception as exc:
            # Fail open: an unreachable Redis must not take the API down with it.
            logger.warning("rate limit check skipped, Redis unavailable: %s", type(exc).__name__)
            return
        if int(count) > limit:
            raise RateLimitedError(
                retry_after_seconds=math.ceil((window + 1) * window_seconds - now)
            )

    async def close(self) -> None:
        await self._redis.aclose()


def create_rate_limiter(redis_url: str | None) -> RateLimiter:
    return RedisRateLimiter(redis_url) if redis_url else InMemoryRateLimiter()
