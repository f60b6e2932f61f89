"""Live event streams of one instance: caps, and one shared database read per subject.

Every stream of a subject (a session or a profile) on this instance joins that subject's
`SubjectFeed`. The feed alone wakes on the bus and reads `session_events` once per wake-up,
then hands each new event to every joined stream's queue: N streams of a subject cost one
read per write, not N. A stream first joins the feed, then replays from its Last-Event-ID
on its own, and from then on takes the feed's events, skipping what the replay already sent:
joining before the replay reads means nothing committed after the replay is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from autopilot_api.core.errors import AppError, TemporaryError
from autopilot_api.core.metrics import EVENT_READS
from autopilot_api.services.event_bus import EventBus

logger = logging.getLogger(__name__)

Fetch = Callable[[int], Awaitable[list[dict[str, Any]]]]
LatestId = Callable[[], Awaitable[int]]

# Ids a feed has sent are kept this long (seconds) so a late-committing re-read sends each once.
SENT_MEMORY_SECONDS = 60.0


class TooManyStreamsError(TemporaryError):
    code = "too_many_streams"
    default_message = "This server holds too many live event streams; retry shortly."


@dataclass
class _Item:
    kind: Literal["event", "error", "evicted"]
    event: dict[str, Any] | None = None
    error: AppError | None = None


@dataclass(eq=False)
class StreamSlot:
    """One stream's place in its subject's feed: the queue the feed fills."""

    serial: int
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)


class SubjectFeed:
    """All the streams of one subject on this instance, fed by one reader task."""

    def __init__(
        self, *, key: str, bus: EventBus, heartbeat: float, registry: StreamRegistry
    ) -> None:
        self.key = key
        self._bus = bus
        self._heartbeat = heartbeat
        self._registry = registry
        self.slots: list[StreamSlot] = []
        self.cursor = 0
        self._start_floor = 0
        self._sent: dict[int, float] = {}
        self._fetch: Fetch | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._start_error: AppError | None = None

    async def ensure_started(self, *, fetch: Fetch, latest_id: LatestId) -> None:
        """The first stream starts the reader; later ones wait until it knows its position."""
        if self._task is None:
            self._fetch = fetch
            self._task = asyncio.create_task(self._run(latest_id), name=f"event-feed {self.key}")
        await self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    async def _run(self, latest_id: LatestId) -> None:
        assert self._fetch is not None
        try:
            async with self._bus.subscribe(self.key) as woken:
                try:
                    # Subscribed first: a write after this read wakes the feed.
                    self.cursor = self._start_floor = await latest_id()
                except AppError as exc:
                    self._start_error = exc
                    self._registry.drop_feed(self)
                    return
                finally:
                    self._started.set()
                while True:
                    try:
                        await asyncio.wait_for(woken.wait(), timeout=self._heartbeat)
                    except TimeoutError:
                        pass  # poll anyway: a wake-up from another instance may be lost
                    woken.clear()
                    try:
                        rows = await self._fetch(self.cursor)
                    except AppError as exc:
                        self._fail(exc)
                        return
                    EVENT_READS.inc()
                    self._distribute(rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - a bug; streams end, clients reconnect
            logger.exception("event feed failed")
            self._fail(AppError(type(exc).__name__))

    def _distribute(self, rows: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for row in rows:
            event_id = int(row["id"])
            # Ids at or below where the feed started were never its to send (streams replay).
            if event_id in self._sent or event_id <= self._start_floor:
                continue
            self._sent[event_id] = now
            self.cursor = max(self.cursor, event_id)
            item = _Item("event", event=row)
            for slot in self.slots:
                slot.queue.put_nowait(item)
        horizon = now - SENT_MEMORY_SECONDS
        for event_id in [i for i, at in self._sent.items() if at < horizon]:
            del self._sent[event_id]

    def _fail(self, exc: AppError) -> None:
        """A failed read ends every stream with the error; the next stream starts afresh."""
        self._registry.drop_feed(self)
        for slot in self.slots:
            slot.queue.put_nowait(_Item("error", error=exc))

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class StreamPlace:
    """A reserved place among the instance's streams; released once, however it ends."""

    def __init__(self, registry: StreamRegistry) -> None:
        self._registry: StreamRegistry | None = registry

    def release(self) -> None:
        if self._registry is not None:
            self._registry.open_streams -= 1
            self._registry = None


class StreamRegistry:
    """The instance's streams, by subject; enforces both caps."""

    def __init__(
        self, *, bus: EventBus, heartbeat: float, max_streams: int, max_per_subject: int
    ) -> None:
        self._bus = bus
        self._heartbeat = heartbeat
        self._max_streams = max_streams
        self._max_per_subject = max_per_subject
        self._feeds: dict[str, SubjectFeed] = {}
        self._serials = itertools.count()
        self.open_streams = 0

    def drop_feed(self, feed: SubjectFeed) -> None:
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]

    def reserve(self) -> StreamPlace:
        """A place among the instance's streams, taken before the 200 is sent; or 503."""
        if self.open_streams >= self._max_streams:
            raise TooManyStreamsError()
        self.open_streams += 1
        return StreamPlace(self)

    @contextlib.asynccontextmanager
    async def join(
        self, *, place: StreamPlace, key: str, fetch: Fetch, latest_id: LatestId
    ) -> AsyncIterator[tuple[SubjectFeed, StreamSlot]]:
        """A place in `key`'s feed; over the subject's cap, its oldest stream is ended."""
        feed = self._feeds.get(key)
        if feed is None:
            feed = SubjectFeed(key=key, bus=self._bus, heartbeat=self._heartbeat, registry=self)
            self._feeds[key] = feed
        slot = StreamSlot(next(self._serials))
        feed.slots.append(slot)
        # A browser reconnecting may arrive before its dead stream is noticed: the new one wins.
        while len(feed.slots) > self._max_per_subject:
            oldest = feed.slots.pop(0)
            oldest.queue.put_nowait(_Item("evicted"))
        try:
            await feed.ensure_started(fetch=fetch, latest_id=latest_id)
            yield feed, slot
        finally:
            place.release()
            with contextlib.suppress(ValueError):
                feed.slots.remove(slot)
            if not feed.slots and self._feeds.get(key) is feed:
                del self._feeds[key]
                await feed.stop()

    async def close(self) -> None:
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            await feed.stop()
