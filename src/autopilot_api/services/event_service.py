"""The live event stream of a session or a profile, read from the audit trail."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast
from uuid import UUID

from supabase import AsyncClient

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import UnauthorizedError
from autopilot_api.core.security import generate_session_token, hash_session_token
from autopilot_api.core.supabase import call_rpc, translate_data_plane_error
from autopilot_api.models.auth import UserContext
from autopilot_api.services.event_bus import profile_subject, session_subject
from autopilot_api.services.event_streams import StreamPlace, StreamRegistry

logger = logging.getLogger(__name__)

# Events are re-read this far back on every poll and sent once (see session_events).
LATE_COMMIT_WINDOW = timedelta(seconds=30)
FETCH_LIMIT = 500
LIVE_EVENT_NAMES = {"extracted": "extraction.completed"}
# After these a session's credential is gone (claimed into a profile, deleted, expired).
SESSION_ENDING_EVENTS = frozenset({"claimed", "deleted", "expired"})


class InvalidTicketError(UnauthorizedError):
    code = "invalid_ticket"
    default_message = "The event ticket is unknown, used or expired; request a new one."


@dataclass(frozen=True)
class EventSubject:
    kind: Literal["session", "profile"]
    id: UUID

    @property
    def key(self) -> str:
        return session_subject(self.id) if self.kind == "session" else profile_subject(self.id)

    @property
    def column(self) -> str:
        return "session_id" if self.kind == "session" else "profile_id"


@dataclass(frozen=True)
class StreamFrame:
    """One thing to write to the stream.

    `ready` comes first, once the stream is subscribed and knows where it starts: from
    then on nothing written is missed. Then events, and heartbeats between them.
    """

    kind: Literal["ready", "event", "heartbeat"]
    event: dict[str, Any] | None = None


def public_event(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "type": LIVE_EVENT_NAMES.get(row["event_type"], row["event_type"]),
        "sessionId": row["session_id"],
        "profileId": row["profile_id"],
        "actor": {"type": row["actor_type"], "id": row["actor_id"]},
        "payload": row["payload"],
        "createdAt": row["created_at"],
    }


class EventService:
    def __init__(
        self, supabase: AsyncClient, settings: Settings, *, streams: StreamRegistry
    ) -> None:
        self._supabase = supabase
        self._settings = settings
        self._streams = streams

    async def issue_ticket(self, *, user: UserContext) -> tuple[str, str]:
        """A single-use ticket for the stream URL (only its hash is stored).

        It ends with the bearer token's exp, so the stream it opens ends with the token: the
        stored hash covers the whole ticket, so a changed exp is an unknown ticket.
        """
        ticket = generate_session_token()
        if user.expires_at is not None:
            ticket = f"{ticket}.{int(user.expires_at)}"
        expires_at = await call_rpc(
            self._supabase,
            "issue_event_ticket",
            {
                "p_ticket_hash": hash_session_token(ticket),
                "p_profile_id": str(user.id),
                "p_ttl_seconds": self._settings.event_ticket_ttl_seconds,
            },
        )
        return ticket, str(expires_at)

    @staticmethod
    def ticket_expiry(ticket: str) -> float | None:
        """The token exp a consumed (hence genuine) ticket carries, if any."""
        _, dot, exp = ticket.rpartition(".")
        return float(exp) if dot and exp.isdigit() else None

    async def consume_ticket(self, *, ticket: str) -> UUID:
        profile_id = await call_rpc(
            self._supabase, "consume_event_ticket", {"p_ticket_hash": hash_session_token(ticket)}
        )
        if not profile_id:
            raise InvalidTicketError()
        return UUID(str(profile_id))

    async def _fetch(self, subject: EventSubject, after_id: int) -> list[dict[str, Any]]:
        since = (datetime.now(UTC) - LATE_COMMIT_WINDOW).isoformat()
        query = (
            self._supabase.table("session_events")
            .select("*")
            .eq(subject.column, str(subject.id))
            .or_(f"id.gt.{after_id},created_at.gt.{since}")
            .order("id")
            .limit(FETCH_LIMIT)
        )
        try:
            response = await query.execute()
        except Exception as exc:
            raise translate_data_plane_error(exc) from exc
        return cast(list[dict[str, Any]], response.data)

    async def latest_event_id(self, subject: EventSubject) -> int:
        query = (
            self._supabase.table("session_events")
            .select("id")
            .eq(subject.column, str(subject.id))
            .order("id", desc=True)
            .limit(1)
        )
        try:
            response = await query.execute()
        except Exception as exc:
            raise translate_data_plane_error(exc) from exc
        rows = cast(list[dict[str, Any]], response.data)
        return int(rows[0]["id"]) if rows else 0

    def frames(
        self, *, subject: EventSubject, last_event_id: int | None, expires_at: float | None = None
    ) -> AsyncGenerator[StreamFrame]:
        """The stream's frames, counted against the instance's cap now (503 past it).

        The place is given back when the stream ends, or when the generator is dropped
        unstarted (a client gone before the first byte): the count never creeps up.
        """
        place = self._streams.reserve()
        stream = self._frames(
            subject=subject, place=place, last_event_id=last_event_id, expires_at=expires_at
        )
        weakref.finalize(stream, place.release)
        return stream

    async def _frames(
        self,
        *,
        subject: EventSubject,
        place: StreamPlace,
        last_event_id: int | None,
        expires_at: float | None,
    ) -> AsyncGenerator[StreamFrame]:
        """Replay after `last_event_id` (or start from now), then live; heartbeats between.

        The live part comes from the subject's shared feed (one read per wake-up for all
        its streams here). The stream ends when evicted by a newer one of its subject, at
        `expires_at` (the credential's end, Unix seconds), or after a session's terminal
        event (the client needs that event, and its credential is gone after it).
        """
        heartbeat = self._settings.events_heartbeat_seconds
        async with self._streams.join(
            place=place,
            key=subject.key,
            fetch=lambda after: self._fetch(subject, after),
            latest_id=lambda: self.latest_event_id(subject),
        ) as (_feed, slot):
            # Joined before the replay reads: whatever commits after it reaches the queue.
            floor = last_event_id if last_event_id is not None else 0
            replayed: set[int] = set()
            yield StreamFrame("ready")
            if last_event_id is not None:
                after = last_event_id
                while True:
                    rows = await self._fetch(subject, after)
                    for row in rows:
                        event_id = int(row["id"])
                        if event_id <= floor or event_id in replayed:
                            continue
                        replayed.add(event_id)
                        yield StreamFrame("event", public_event(row))
                        if self._ends_stream(subject, row):
                            return
                    newest = max((int(r["id"]) for r in rows), default=after)
                    if len(rows) < FETCH_LIMIT or newest <= after:
                        break
                    after = newest
            while True:
                timeout = heartbeat
                if expires_at is not None:
                    remaining = expires_at - time.time()
                    if remaining <= 0:
                        return
                    timeout = min(timeout, remaining)
                try:
                    item = await asyncio.wait_for(slot.queue.get(), timeout=timeout)
                except TimeoutError:
                    if expires_at is not None and time.time() >= expires_at:
                        return
                    yield StreamFrame("heartbeat")
                    continue
                if item.kind == "evicted":
                    return
                if item.kind == "error":
                    assert item.error is not None
                    raise item.error
                assert item.event is not None
                event_id = int(item.event["id"])
                if event_id <= floor or event_id in replayed:
                    continue
                yield StreamFrame("event", public_event(item.event))
                if self._ends_stream(subject, item.event):
                    return

    @staticmethod
    def _ends_stream(subject: EventSubject, row: dict[str, Any]) -> bool:
        return subject.kind == "session" and row["event_type"] in SESSION_ENDING_EVENTS
