"""Live event streams of one instance: their caps, and one shared database read per subject.

Caps. A stream takes a place before its 200 is sent, counted at once against every cap (one
event loop, no await between the check and the count: atomic within the instance):
- the instance (EVENTS_MAX_STREAMS), 503 past it;
- the anonymous streams together (EVENTS_ANONYMOUS_STREAMS_SHARE of it): they cost nothing
  to open, so they never fill the instance; 503 past it, while signed-in users find room;
- the client IP (EVENTS_MAX_STREAMS_PER_IP, IPv6 by /64), 429 + Retry-After past it;
- the subject (EVENTS_MAX_STREAMS_PER_SUBJECT): past it the subject's oldest stream ends.
A subject never loses to a cap while it holds streams of its own: a newcomer that a cap would
refuse takes the place of that subject's oldest stream (from the same IP for the IP cap)
instead, since a browser reconnecting may arrive before its dead stream is noticed. Nobody
else's stream is ever ended to make room, so streams of different subjects never chase each
other out (an EventSource reconnects by itself: ending another's stream would start a round
of reconnects that each end the next).

The caps are per instance, not shared through Redis: what they protect (connections, feed
tasks, memory) belongs to one process, and a per-IP count per instance bounds one IP to the
same share of every instance that a shared count would, without a Redis round trip on every
open or counts left behind by a crashed instance.

Shared read. Every stream of a subject on this instance joins that subject's `SubjectFeed`.
The feed alone wakes on the bus and reads `session_events` once per wake-up, then hands each
new event to every joined stream's queue: N streams of a subject cost one read per write.
A stream joins the feed first, then replays from its Last-Event-ID on its own, and takes the
feed's events from then on, skipping what the replay sent: nothing committed after the
replay's read is missed.

What a read is. New rows (`id > cursor`), page after page while pages come back full, so a
burst is read through to its end; and rows that committed late, below the cursor: ids are
taken when a transaction inserts, so a row can become visible after rows with larger ids
were sent. Those can only be in the ids the feed passed in the last LATE_COMMIT_WINDOW
(every write is one statement, under the statement timeout), so the feed counts the stored
rows of that range and compares with what it sent there; only when more are stored does it
read their ids and fetch the missing rows. Memory: the ids sent within the window, and at
most STREAM_QUEUE_LIMIT events waiting per stream (a stream further behind is ended; its
client resumes from the database with Last-Event-ID).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import AppError, RateLimitedError, TemporaryError
from autopilot_api.core.metrics import (
    EVENT_READS,
    EVENT_STREAMS_CUT,
    EVENT_STREAMS_OPEN,
    EVENT_STREAMS_REFUSED,
)
from autopilot_api.services.event_bus import EventBus

logger = logging.getLogger(__name__)

# Rows a feed or a replay reads per request.
PAGE_SIZE = 500
# How long after the feed passed an id a row below it may still commit: above the statement
# timeout of every write (8 s) with room to spare; a lost wake-up adds a heartbeat to it.
LATE_COMMIT_WINDOW_SECONDS = 30.0
# Events waiting in one stream's queue: beyond, the stream is too far behind its subject and
# ends (the client resumes with Last-Event-ID, from the database): a feed's memory is bounded.
STREAM_QUEUE_LIMIT = 10_000
# A refused stream from an IP at its cap may try again after this (a place frees when one of
# that IP's streams ends; a closed tab frees it at once).
PER_IP_RETRY_AFTER_SECONDS = 10

StopReason = Literal["replaced", "lagging", "stalled"]


class TooManyStreamsError(TemporaryError):
    code = "too_many_streams"
    default_message = "This server holds too many live event streams; retry shortly."


class TooManyAnonymousStreamsError(TemporaryError):
    code = "too_many_anonymous_streams"
    default_message = (
        "This server holds as many anonymous live event streams as it allows; retry shortly, "
        "or sign in."
    )


class TooManyStreamsFromIpError(RateLimitedError):
    code = "too_many_streams_from_ip"
    default_message = (
        "Too many live event streams from this address; close one, or retry after the time "
        "in Retry-After."
    )

    def __init__(self) -> None:
        super().__init__(retry_after_seconds=PER_IP_RETRY_AFTER_SECONDS)


class FeedReader(Protocol):
    """What a feed reads of its subject's events (ids are `session_events.id`)."""

    async def latest_id(self) -> int: ...

    async def after(self, after_id: int, *, limit: int) -> list[dict[str, Any]]:
        """Rows with an id above `after_id`, in id order, at most `limit`."""
        ...

    async def count_between(self, low: int, high: int) -> int:
        """How many rows have an id in (low, high]."""
        ...

    async def ids_between(self, low: int, high: int) -> list[int]: ...

    async def with_ids(self, ids: Sequence[int]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class StreamOwner:
    """What a stream is counted against."""

    subject: str
    # The client IP's bucket (services.rate_limiter.client_bucket: IPv6 by its /64).
    ip: str
    # Anonymous sessions and Supabase's anonymous users: free to create.
    anonymous: bool


@dataclass(frozen=True)
class StreamCaps:
    instance: int
    per_subject: int
    per_ip: int
    anonymous: int

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamCaps:
        instance = settings.events_max_streams
        return cls(
            instance=instance,
            per_subject=settings.events_max_streams_per_subject,
            per_ip=settings.events_max_streams_per_ip,
            anonymous=max(1, int(instance * settings.events_anonymous_streams_share)),
        )


@dataclass
class _Item:
    kind: Literal["event", "error", "stopped"]
    event: dict[str, Any] | None = None
    error: AppError | None = None


class StreamPlace:
    """One stream's place: counted against the caps from `reserve` until `release` (once,
    however the stream ends), and the queue its subject's feed fills."""

    def __init__(self, registry: StreamRegistry, owner: StreamOwner, serial: int) -> None:
        self.owner = owner
        self.serial = serial
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        # Set when the server ends the stream early: its response stops at once, even in
        # the middle of a write its client does not read.
        self.stopped = asyncio.Event()
        self.feed: SubjectFeed | None = None
        self._registry: StreamRegistry | None = registry

    def stop(self, reason: StopReason) -> None:
        if self.stopped.is_set():
            return
        EVENT_STREAMS_CUT.labels(reason).inc()
        self.stopped.set()
        self.queue.put_nowait(_Item("stopped"))
        if self.feed is not None:
            with contextlib.suppress(ValueError):
                self.feed.places.remove(self)
        self.release()

    def release(self) -> None:
        if self._registry is not None:
            self._registry._forget(self)
            self._registry = None


class SubjectFeed:
    """All the streams of one subject on this instance, fed by one reader task."""

    def __init__(
        self, *, key: str, bus: EventBus, heartbeat: float, registry: StreamRegistry
    ) -> None:
        self.key = key
        self._bus = bus
        self._heartbeat = heartbeat
        self._registry = registry
        self.places: list[StreamPlace] = []
        self.cursor = 0
        self._start_floor = 0
        # Ids sent above the late-commit floor (a set to look up, a heap to forget in order).
        self._sent: set[int] = set()
        self._sent_order: list[int] = []
        # (when, cursor) after reads: the floor is the cursor of a window ago.
        self._positions: deque[tuple[float, int]] = deque()
        self._floor = 0
        self._late_window = LATE_COMMIT_WINDOW_SECONDS + heartbeat
        self._reader: FeedReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._start_error: AppError | None = None

    async def ensure_started(self, *, reader: FeedReader) -> None:
        """The first stream starts the reader; later ones wait until it knows its position."""
        if self._task is None:
            self._reader = reader
            self._task = asyncio.create_task(self._run(), name=f"event-feed {self.key}")
        await self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    async def _run(self) -> None:
        assert self._reader is not None
        try:
            async with self._bus.subscribe(self.key) as woken:
                try:
                    # Subscribed first: a write after this read wakes the feed.
                    self.cursor = self._start_floor = await self._reader.latest_id()
                    self._floor = self._start_floor
                    self._positions.append((time.monotonic(), self.cursor))
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
                        await self._read(self._reader)
                    except AppError as exc:
                        self._fail(exc)
                        return
                    EVENT_READS.inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - a bug; streams end, clients reconnect
            logger.exception("event feed failed")
            self._fail(AppError(type(exc).__name__))

    async def _read(self, reader: FeedReader) -> None:
        """Late commits below the cursor, then every new row, page after page."""
        floor = self._advance_floor()
        cursor = self.cursor
        if cursor > floor:
            stored, page = await asyncio.gather(
                reader.count_between(floor, cursor), reader.after(cursor, limit=PAGE_SIZE)
            )
            # Every id sent is stored (the table is append-only): more stored means a row
            # committed after the feed passed its id.
            if stored > len(self._sent):
                await self._read_late(reader, floor, cursor)
        else:
            page = await reader.after(cursor, limit=PAGE_SIZE)
        while True:
            self._distribute(page)
            if len(page) < PAGE_SIZE:
                break
            page = await reader.after(self.cursor, limit=PAGE_SIZE)
        if self.cursor != cursor:
            self._positions.append((time.monotonic(), self.cursor))

    async def _read_late(self, reader: FeedReader, floor: int, cursor: int) -> None:
        missing = [i for i in await reader.ids_between(floor, cursor) if i not in self._sent]
        for start in range(0, len(missing), PAGE_SIZE):
            rows = await reader.with_ids(missing[start : start + PAGE_SIZE])
            self._distribute(sorted(rows, key=lambda row: int(row["id"])))

    def _advance_floor(self) -> int:
        """The cursor of a late-commit window ago: every row below it has committed, been
        seen and been sent (or lies below where the feed started), so it is forgotten."""
        horizon = time.monotonic() - self._late_window
        positions = self._positions
        while len(positions) > 1 and positions[1][0] <= horizon:
            positions.popleft()
        if positions and positions[0][0] <= horizon:
            self._floor = max(self._floor, positions[0][1])
        while self._sent_order and self._sent_order[0] <= self._floor:
            self._sent.discard(heapq.heappop(self._sent_order))
        return self._floor

    def _distribute(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            event_id = int(row["id"])
            # Ids at or below where the feed started were never its to send (streams replay).
            if event_id in self._sent or event_id <= self._start_floor:
                continue
            self._sent.add(event_id)
            heapq.heappush(self._sent_order, event_id)
            self.cursor = max(self.cursor, event_id)
            item = _Item("event", event=row)
            for place in list(self.places):
                if place.queue.qsize() >= STREAM_QUEUE_LIMIT:
                    place.stop("lagging")
                else:
                    place.queue.put_nowait(item)

    def _fail(self, exc: AppError) -> None:
        """A failed read ends every stream with the error; the next stream starts afresh."""
        self._registry.drop_feed(self)
        for place in self.places:
            place.queue.put_nowait(_Item("error", error=exc))

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class StreamRegistry:
    """The instance's streams: their places under the caps, and their subjects' feeds."""

    def __init__(self, *, bus: EventBus, heartbeat: float, caps: StreamCaps) -> None:
        self._bus = bus
        self._heartbeat = heartbeat
        self.caps = caps
        self._feeds: dict[str, SubjectFeed] = {}
        self._serials = itertools.count()
        # Oldest first (lists in the order the places were taken).
        self._by_subject: dict[str, list[StreamPlace]] = {}
        self._by_ip: dict[str, int] = {}
        self.open_streams = 0
        self.anonymous_streams = 0

    @classmethod
    def for_settings(cls, settings: Settings, *, bus: EventBus) -> StreamRegistry:
        return cls(
            bus=bus,
            heartbeat=settings.events_heartbeat_seconds,
            caps=StreamCaps.from_settings(settings),
        )

    def reserve(self, owner: StreamOwner) -> StreamPlace:
        """A place under every cap, taken before the 200 is sent; or 429 / 503."""
        caps = self.caps
        while True:
            own = self._by_subject.get(owner.subject, [])
            victim: StreamPlace | None
            if self._by_ip.get(owner.ip, 0) >= caps.per_ip:
                victim = next((p for p in own if p.owner.ip == owner.ip), None)
                if victim is None:
                    raise self._refused(TooManyStreamsFromIpError(), "ip")
            elif self.open_streams >= caps.instance:
                if not own:
                    raise self._refused(TooManyStreamsError(), "instance")
                victim = own[0]
            elif owner.anonymous and self.anonymous_streams >= caps.anonymous:
                if not own:
                    raise self._refused(TooManyAnonymousStreamsError(), "anonymous")
                victim = own[0]
            elif len(own) >= caps.per_subject:
                victim = own[0]
            else:
                break
            victim.stop("replaced")
        place = StreamPlace(self, owner, next(self._serials))
        self._by_subject.setdefault(owner.subject, []).append(place)
        self._by_ip[owner.ip] = self._by_ip.get(owner.ip, 0) + 1
        self.open_streams += 1
        if owner.anonymous:
            self.anonymous_streams += 1
        EVENT_STREAMS_OPEN.labels(_kind(owner)).inc()
        return place

    @staticmethod
    def _refused(error: AppError, cap: str) -> AppError:
        EVENT_STREAMS_REFUSED.labels(cap).inc()
        return error

    def _forget(self, place: StreamPlace) -> None:
        owner = place.owner
        places = self._by_subject.get(owner.subject, [])
        with contextlib.suppress(ValueError):
            places.remove(place)
        if not places:
            self._by_subject.pop(owner.subject, None)
        left = self._by_ip.get(owner.ip, 0) - 1
        if left > 0:
            self._by_ip[owner.ip] = left
        else:
            self._by_ip.pop(owner.ip, None)
        self.open_streams -= 1
        if owner.anonymous:
            self.anonymous_streams -= 1
        EVENT_STREAMS_OPEN.labels(_kind(owner)).dec()

    def drop_feed(self, feed: SubjectFeed) -> None:
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]

    @contextlib.asynccontextmanager
    async def join(self, place: StreamPlace, *, reader: FeedReader) -> AsyncIterator[SubjectFeed]:
        """The place's seat in its subject's feed, until the stream ends."""
        key = place.owner.subject
        feed = self._feeds.get(key)
        if feed is None:
            feed = SubjectFeed(key=key, bus=self._bus, heartbeat=self._heartbeat, registry=self)
            self._feeds[key] = feed
        if not place.stopped.is_set():
            feed.places.append(place)
            place.feed = feed
        try:
            await feed.ensure_started(reader=reader)
            yield feed
        finally:
            place.release()
            place.feed = None
            with contextlib.suppress(ValueError):
                feed.places.remove(place)
            if not feed.places and self._feeds.get(key) is feed:
                del self._feeds[key]
                await feed.stop()

    async def close(self) -> None:
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            await feed.stop()


def _kind(owner: StreamOwner) -> str:
    return "anonymous" if owner.anonymous else "signed_in"
