"""Sliding-window rate limits: the moving window of the `limits` library. A limit of N per W
seconds holds over every span of W seconds, so twice the limit can no longer fit across a
window boundary as it did with fixed windows. In-process by default; Redis shares the
counts across instances when REDIS_URL is set (README, "Scaling out")."""

from __future__ import annotations

import bisect
import ipaddress
import logging
import math
import time
from functools import lru_cache
from typing import Protocol

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from redis import asyncio as redis_asyncio

from autopilot_api.core.errors import RateLimitedError

logger = logging.getLogger(__name__)

# After a Redis failure, how long requests skip the check (failing open) before it is tried
# again: an unreachable Redis costs one connect timeout per interval, not one per request.
REDIS_RETRY_SECONDS = 5.0
REDIS_TIMEOUT_SECONDS = 3.0
REDIS_KEY_PREFIX = "autopilot:ratelimit"
# How often the in-process storage drops expired timestamps (it only frees memory: the
# limits are exact either way).
MEMORY_SWEEP_SECONDS = 10.0


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


@lru_cache(maxsize=256)
def _item(limit: int, window_seconds: int) -> RateLimitItem:
    return RateLimitItemPerSecond(limit, window_seconds)


class _MovingWindowLimiter:
    """`hit` over a `limits` storage. A refused event is not recorded, so a client that keeps
    trying is not locked out for longer; Retry-After is when the oldest event in the window
    leaves it, which frees a slot."""

    def __init__(self, storage: Storage) -> None:
        self._strategy = MovingWindowRateLimiter(storage)

    async def _check(self, key: str, limit: int, window_seconds: int) -> None:
        item = _item(limit, window_seconds)
        if await self._strategy.hit(item, key):
            return
        stats = await self._strategy.get_window_stats(item, key)
        retry_after = math.ceil(stats.reset_time - time.time())
        raise RateLimitedError(retry_after_seconds=min(max(retry_after, 1), window_seconds))


class _SweptMemoryStorage(MemoryStorage):
    """limits' in-process storage with a cheaper sweep of expired entries. The library starts
    a sweep of every key after every hit and hands each key to a thread: measured, 0.87 of a
    core at ~460 hits/s over 100 keys, and 1.8 s of CPU per sweep of 20,000 keys. Here at
    most one sweep every MEMORY_SWEEP_SECONDS, in the event loop (~1 µs a key). It overrides
    the library's private scheduling hook; tests/unit/test_rate_limiter.py checks both."""

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + MEMORY_SWEEP_SECONDS
            self.sweep()

    def sweep(self) -> None:
        """Drop expired entries and the keys left empty. Synchronous: no hit interleaves
        (a hit never awaits inside its lock)."""
        now = time.time()
        for key, events in list(self.events.items()):
            # Newest first: the live ones are a prefix.
            live = bisect.bisect_left(events, -now, key=lambda event: -event.expiry)
            if live:
                if live < len(events):
                    self.events[key] = events[:live]
            else:
                del self.events[key]
                self.locks.pop(key, None)
        for key, expires_at in list(self.expirations.items()):
            if expires_at <= now:
                self.storage.pop(key, None)
                del self.expirations[key]
                self.locks.pop(key, None)


class InMemoryRateLimiter(_MovingWindowLimiter):
    """This process's counts only (one instance, or WORKERS=1). Memory: at most `limit`
    timestamps per key live in the window; expired ones are swept."""

    def __init__(self) -> None:
        self.storage = _SweptMemoryStorage()
        super().__init__(self.storage)

    async def hit(self, *, key: str, limit: int, window_seconds: int) -> None:
        await self._check(key, limit, window_seconds)

    async def close(self) -> None:
        return None


class RedisRateLimiter(_MovingWindowLimiter):
    """The same moving windows in Redis (a list of timestamps per key, trimmed to the limit
    and expiring with the window, updated by one Lua script), so every instance shares them.
    Through redis-py's asyncio client, the one the event bus uses: no second Redis client.

    Redis unreachable: the limits fail open (an outage of Redis must not take the API down
    with it), logged once when it starts and once when it ends, not per request."""

    def __init__(self, redis_url: str) -> None:
        self._pool = redis_asyncio.ConnectionPool.from_url(
            redis_url,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
        )
        # The URI only selects the storage class: the connection comes from our pool (a
        # documented option of RedisStorage, typed narrower than it is), which close() ends.
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            wrap_exceptions=True,
            key_prefix=REDIS_KEY_PREFIX,
            connection_pool=self._pool,  # type: ignore[arg-type]
        )
        super().__init__(storage)
        self._failing = False
        self._retry_at = 0.0

    async def hit(self, *, key: str, limit: int, window_seconds: int) -> None:
        if self._failing and time.monotonic() < self._retry_at:
            return
        try:
            await self._check(key, limit, window_seconds)
        except RateLimitedError:
            self._recovered()
            raise
        except Exception as exc:
            self._retry_at = time.monotonic() + REDIS_RETRY_SECONDS
            if not self._failing:
                self._failing = True
                logger.warning(
                    "rate limits not enforced: Redis unavailable (%s); retried every %ds, "
                    "and logged again when it is back",
                    type(exc).__name__,
                    REDIS_RETRY_SECONDS,
                )
            return
        self._recovered()

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("rate limits enforced again: Redis is reachable")

    async def close(self) -> None:
        await self._pool.aclose()


def create_rate_limiter(redis_url: str | None) -> RateLimiter:
    return RedisRateLimiter(redis_url) if redis_url else InMemoryRateLimiter()
