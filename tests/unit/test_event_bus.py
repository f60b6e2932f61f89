"""The Redis event bus against a real Redis (tests/fixtures/redis.py)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis import asyncio as redis_asyncio

from autopilot_api.services.event_bus import CHANNEL_PREFIX, RedisEventBus

ASYNC = pytest.mark.asyncio(loop_scope="session")
WAIT_SECONDS = 15.0


def named(redis_url: str, name: str) -> str:
    """The URL with a client name, so CLIENT LIST tells this bus's connections apart."""
    parts = urlsplit(redis_url)
    query = f"{parts.query}&client_name={name}" if parts.query else f"client_name={name}"
    return urlunsplit(parts._replace(query=query))


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


@ASYNC
async def test_a_lost_subscription_is_replaced_not_added_to(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Killing the listener's connection (what a Redis restart or failover does) leaves one
    pattern subscription once the listener is back, not the old one beside the new."""
    name = f"bus-{uuid.uuid4().hex[:12]}"
    admin = redis_asyncio.from_url(redis_url)
    bus = RedisEventBus(named(redis_url, name), reconnect_delay_seconds=0.05)

    async def subscribed() -> list[str]:
        clients = await admin.client_list()
        return [c["id"] for c in clients if c["name"] == name and c["psub"] != "0"]

    async def back_again() -> bool:
        return any("subscribed again" in r.getMessage() for r in caplog.records)

    caplog.set_level(logging.INFO, logger="autopilot_api.services.event_bus")
    await bus.start()
    try:
        for _ in range(3):
            await eventually(lambda: _count_is(subscribed, 1), "one subscription")
            (killed,) = await subscribed()
            caplog.clear()
            await admin.client_kill_filter(_id=killed)
            await eventually(back_again, "the listener subscribed again")
            ids = await subscribed()
            assert killed not in ids
            assert len(ids) == 1, ids
        # And it delivers: a wake-up published by another instance reaches this one.
        async with bus.subscribe("session:x") as waiter:
            await admin.publish(f"{CHANNEL_PREFIX}session:x", b"")
            await asyncio.wait_for(waiter.wait(), WAIT_SECONDS)
    finally:
        await bus.close()
        await admin.aclose()


async def _count_is(ids: Callable[[], Awaitable[list[str]]], count: int) -> bool:
    return len(await ids()) == count
