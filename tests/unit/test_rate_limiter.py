"""Sliding-window rate limits (issue 20, item 5), on both backends, driven by a clock the
test moves: the in-process storage of `limits` and a real Redis (tests/fixtures/redis.py)."""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import AsyncIterator

import limits.aio.storage.memory
import limits.aio.storage.redis.redispy
import pytest
import pytest_asyncio
import redis

from autopilot_api.core.errors import RateLimitedError
from autopilot_api.services import rate_limiter as rate_limiter_module
from autopilot_api.services.rate_limiter import (
    MEMORY_SWEEP_SECONDS,
    InMemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)

ASYNC = pytest.mark.asyncio(loop_scope="session")
WINDOW = 10
LIMIT = 4


class Clock:
    """Stands in for the `time` module where the limiter and the storages read the time."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    # Far from any real timestamp, so nothing left in a shared Redis by another run counts.
    fake = Clock(start=float(int(time.time()) // WINDOW * WINDOW))
    namespace = types.SimpleNamespace(time=fake.time, monotonic=fake.monotonic)
    for module in (
        rate_limiter_module,
        limits.aio.storage.memory,
        limits.aio.storage.redis.redispy,
    ):
        monkeypatch.setattr(module, "time", namespace)
    return fake


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    made: RateLimiter
    if request.param == "memory":
        made = InMemoryRateLimiter()
    else:
        made = RedisRateLimiter(request.getfixturevalue("redis_url"))
    try:
        yield made
    finally:
        await made.close()


async def _allowed(limiter: RateLimiter, key: str, times: int) -> int:
    allowed = 0
    for _ in range(times):
        try:
            await limiter.hit(key=key, limit=LIMIT, window_seconds=WINDOW)
        except RateLimitedError:
            continue
        allowed += 1
    return allowed


def _key(request: pytest.FixtureRequest) -> str:
    return f"test:{request.node.name}:{time.time_ns()}"


@ASYNC
class TestSlidingWindow:
    async def test_twice_the_limit_no_longer_fits_across_a_window_boundary(
        self, limiter: RateLimiter, clock: Clock, request: pytest.FixtureRequest
    ) -> None:
        key = _key(request)
        # The burst a fixed window allowed: the limit just before a boundary ...
        clock.now += WINDOW - 0.1
        assert await _allowed(limiter, key, LIMIT) == LIMIT
        # ... and the limit again just after it. Within any 10 s, still only LIMIT.
        clock.now += 0.2
        assert await _allowed(limiter, key, LIMIT) == 0
        clock.now += WINDOW - 0.3
        assert await _allowed(limiter, key, LIMIT) == 0
        # A full window after the burst its slots are free again.
        clock.now += 0.3
        assert await _allowed(limiter, key, LIMIT + 1) == LIMIT

    async def test_retry_after_is_when_the_oldest_event_leaves_the_window(
        self, limiter: RateLimiter, clock: Clock, request: pytest.FixtureRequest
    ) -> None:
        key = _key(request)
        start = clock.now
        for at in (0.0, 3.0, 3.5, 4.0):
            clock.now = start + at
            await limiter.hit(key=key, limit=LIMIT, window_seconds=WINDOW)
        clock.now = start + 6.5
        with pytest.raises(RateLimitedError) as refused:
            await limiter.hit(key=key, limit=LIMIT, window_seconds=WINDOW)
        # The event at 0.0 leaves at 10.0: a slot is free 3.5 s after 6.5 (rounded up).
        assert refused.value.headers == {"Retry-After": "4"}
        assert refused.value.details == {"retryAfterSeconds": 4}
        clock.now = start + 10.01
        await limiter.hit(key=key, limit=LIMIT, window_seconds=WINDOW)
        # The next slot is the one taken at 3.0.
        with pytest.raises(RateLimitedError) as again:
            await limiter.hit(key=key, limit=LIMIT, window_seconds=WINDOW)
        assert again.value.headers == {"Retry-After": "3"}

    async def test_refused_events_are_not_counted(
        self, limiter: RateLimiter, clock: Clock, request: pytest.FixtureRequest
    ) -> None:
        key = _key(request)
        assert await _allowed(limiter, key, LIMIT) == LIMIT
        # A client that keeps knocking is not locked out for longer.
        for _ in range(50):
            clock.now += 0.1
            assert await _allowed(limiter, key, 1) == 0
        clock.now += WINDOW - 4.9
        assert await _allowed(limiter, key, LIMIT) == LIMIT

    async def test_keys_and_limits_count_apart(
        self, limiter: RateLimiter, clock: Clock, request: pytest.FixtureRequest
    ) -> None:
        key = _key(request)
        assert await _allowed(limiter, key, LIMIT) == LIMIT
        assert await _allowed(limiter, key + ":other", LIMIT) == LIMIT
        await limiter.hit(key=key, limit=LIMIT + 10, window_seconds=WINDOW)


@ASYNC
class TestInMemoryStorage:
    async def test_a_hit_starts_no_background_sweep_and_the_sweep_frees_expired_keys(
        self, clock: Clock
    ) -> None:
        limiter = InMemoryRateLimiter()
        for index in range(1000):
            await limiter.hit(key=f"k{index}", limit=LIMIT, window_seconds=WINDOW)
        # The library's own sweep (a task per hit, a thread per key) never starts.
        assert limiter.storage.timer is None
        assert len(limiter.storage.events) == 1000
        clock.now += WINDOW + MEMORY_SWEEP_SECONDS + 1
        await limiter.hit(key="fresh", limit=LIMIT, window_seconds=WINDOW)
        assert set(limiter.storage.events) == {"LIMITER/fresh/4/10/second"}
        assert limiter.storage.timer is None


@ASYNC
class TestRedisUnavailable:
    async def test_limits_fail_open_and_the_outage_is_logged_once(
        self, clock: Clock, caplog: pytest.LogCaptureFixture, redis_url: str
    ) -> None:
        unreachable = RedisRateLimiter("redis://127.0.0.1:9/0")
        try:
            with caplog.at_level(logging.WARNING, logger=rate_limiter_module.__name__):
                for _ in range(3 * LIMIT):
                    await unreachable.hit(key="down", limit=LIMIT, window_seconds=WINDOW)
                    clock.now += 0.5
                # Past the retry interval it is tried again, and still not logged again.
                clock.now += rate_limiter_module.REDIS_RETRY_SECONDS
                await unreachable.hit(key="down", limit=LIMIT, window_seconds=WINDOW)
        finally:
            await unreachable.close()
        messages = [record.getMessage() for record in caplog.records]
        assert len(messages) == 1, messages
        assert "rate limits not enforced: Redis unavailable" in messages[0]

    async def test_back_in_service_it_says_so_once_and_limits_again(
        self,
        clock: Clock,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
        redis_url: str,
        request: pytest.FixtureRequest,
    ) -> None:
        limiter = RedisRateLimiter(redis_url)
        key = _key(request)

        async def unreachable(*_: object, **__: object) -> bool:
            raise redis.ConnectionError("Connection refused")

        try:
            with caplog.at_level(logging.WARNING, logger=rate_limiter_module.__name__):
                with monkeypatch.context() as outage:
                    outage.setattr(limiter._strategy, "hit", unreachable)
                    assert await _allowed(limiter, key, 2 * LIMIT) == 2 * LIMIT
                clock.now += rate_limiter_module.REDIS_RETRY_SECONDS + 0.1
                assert await _allowed(limiter, key, 2 * LIMIT) == LIMIT
        finally:
            await limiter.close()
        messages = [record.getMessage() for record in caplog.records]
        assert len(messages) == 2, messages
        assert "Redis is reachable" in messages[1]


@ASYNC
async def test_two_limiters_on_one_redis_share_their_counts(
    clock: Clock, redis_url: str, request: pytest.FixtureRequest
) -> None:
    """What two instances of the service do: each its own client, one count."""
    first, second = RedisRateLimiter(redis_url), RedisRateLimiter(redis_url)
    key = _key(request)
    try:
        results = await asyncio.gather(
            *(_allowed(limiter, key, LIMIT) for limiter in (first, second, first, second))
        )
    finally:
        await first.close()
        await second.close()
    assert sum(results) == LIMIT
