"""Wakes live event streams when their subject has something new.

The bus carries no events, only "subject X changed": the `session_events` table is the
source of truth, and a woken stream reads it. Losing a wake-up therefore loses nothing
(streams also poll at every heartbeat). In-process by default; with REDIS_URL, a wake-up
published by one instance reaches streams held by every instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Protocol

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "autopilot:events:"
# Between a lost subscription and the next attempt: streams poll at their heartbeat meanwhile.
RECONNECT_DELAY_SECONDS = 1.0


def session_subject(session_id: object) -> str:
    return f"session:{session_id}"


def profile_subject(profile_id: object) -> str:
    return f"profile:{profile_id}"


class EventBus(Protocol):
    async def publish(self, subject: str) -> None: ...

    def subscribe(self, subject: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """An event set whenever `subject` is published (clear it after reading)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class _LocalWaiters:
    """Subject → the asyncio.Events of the streams in this process that follow it."""

    def __init__(self) -> None:
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    def wake(self, subject: str) -> None:
        for waiter in self._waiters.get(subject, ()):
            waiter.set()

    @contextlib.asynccontextmanager
    async def subscribe(self, subject: str) -> AsyncIterator[asyncio.Event]:
        waiter = asyncio.Event()
        self._waiters[subject].add(waiter)
        try:
            yield waiter
        finally:
            self._waiters[subject].discard(waiter)
            if not self._waiters[subject]:
                del self._waiters[subject]


class InProcessEventBus:
    def __init__(self) -> None:
        self._local = _LocalWaiters()

    async def publish(self, subject: str) -> None:
        self._local.wake(subject)

    def subscribe(self, subject: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        return self._local.subscribe(subject)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisEventBus:
    """One pattern subscription per instance, fanned out to local streams."""

    def __init__(
        self, redis_url: str, *, reconnect_delay_seconds: float = RECONNECT_DELAY_SECONDS
    ) -> None:
        from redis import asyncio as redis_asyncio

        self._redis = redis_asyncio.from_url(redis_url, socket_connect_timeout=3)
        self._local = _LocalWaiters()
        self._listener: asyncio.Task[None] | None = None
        self._reconnect_delay = reconnect_delay_seconds

    async def publish(self, subject: str) -> None:
        try:
            await self._redis.publish(CHANNEL_PREFIX + subject, b"")
        except Exception as exc:
            # Streams here still wake, and remote ones poll at their heartbeat.
            logger.warning("event publish to Redis failed: %s", type(exc).__name__)
        self._local.wake(subject)

    def subscribe(self, subject: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        return self._local.subscribe(subject)

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="redis-event-listener")

    async def _listen(self) -> None:
        lost = False
        while True:
            try:
                # Closed however the loop leaves it: redis-py reconnects and re-subscribes a
                # pubsub left open, so each lost connection would add one more subscription.
                async with self._redis.pubsub() as pubsub:
                    await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                    if lost:
                        logger.info("Redis event listener subscribed again")
                        lost = False
                    async for message in pubsub.listen():
                        if message.get("type") != "pmessage":
                            continue
                        channel = message["channel"]
                        if isinstance(channel, bytes):
                            channel = channel.decode()
                        self._local.wake(channel[len(CHANNEL_PREFIX) :])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("Redis event listener lost its connection: %s", type(exc).__name__)
                lost = True
                await asyncio.sleep(self._reconnect_delay)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()


def create_event_bus(redis_url: str | None) -> EventBus:
    return RedisEventBus(redis_url) if redis_url else InProcessEventBus()
