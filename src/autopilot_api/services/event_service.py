"""The live event stream of a session or a profile, read from the audit trail."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast
from uuid import UUID

from postgrest import CountMethod
from supabase import AsyncClient

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import UnauthorizedError
from autopilot_api.core.security import generate_session_token, hash_session_token
from autopilot_api.core.supabase import call_rpc, translate_data_plane_error
from autopilot_api.models.auth import UserContext
from autopilot_api.services.event_bus import EventBus, profile_subject, session_subject
from autopilot_api.services.event_streams import (
    PAGE_SIZE,
    StreamOwner,
    StreamPlace,
    StreamRegistry,
)
from autopilot_api.services.rate_limiter import client_bucket

logger = logging.getLogger(__name__)

# A stream's writes may run this far past its end before it is given up (its final frame).
STREAM_END_GRACE_SECONDS = 1.0
LIVE_EVENT_NAMES = {"extracted": "extraction.completed"}
# After these a session's credential is gone (claimed into a profile, deleted, expired).
SESSION_ENDING_EVENTS = frozenset({"claimed", "deleted", "expired"})
# A stream credential outlives the longest stream by this much: room for the browser's
# reconnect delay, or a restart of the service, before it presents the credential again.
STREAM_CREDENTIAL_GRACE_SECONDS = 120


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
class TicketGrant:
    """A stream opened with a ticket: whose, until when, and the credential to set as the
    stream cookie (new on the ticket's first use, else the one presented, renewed)."""

    profile_id: UUID
    not_after: datetime
    credential: str
    credential_expires_at: str


@dataclass(frozen=True)
class StreamFrame:
    """One thing to write to the stream.

    `ready` comes first, once the stream is subscribed and knows where it starts (`cursor`):
    from then on nothing written is missed. Then events, and heartbeats between them.
    """

    kind: Literal["ready", "event", "heartbeat"]
    event: dict[str, Any] | None = None
    cursor: int | None = None


@dataclass(frozen=True)
class LiveStream:
    """A stream that holds its place: its frames, and when and how its writes must end."""

    frames: AsyncGenerator[StreamFrame]
    # time.monotonic() at which the stream ends by itself; a write blocked by a client that
    # reads nothing is not allowed past it (plus STREAM_END_GRACE_SECONDS).
    ends_at: float
    place: StreamPlace

    @property
    def stopped(self) -> asyncio.Event:
        """Set when the server ends the stream early (replaced, lagging, stalled)."""
        return self.place.stopped

    def client_stalled(self) -> None:
        """Its client read nothing within the send deadline: the place goes back now."""
        self.place.stop("stalled")


class SubjectEvents:
    """The events of one subject in `session_events`, as a feed or a replay reads them."""

    def __init__(self, supabase: AsyncClient, subject: EventSubject) -> None:
        self._supabase = supabase
        self._subject = subject

    def _query(self, columns: str, **options: Any) -> Any:
        return (
            self._supabase.table("session_events")
            .select(columns, **options)
            .eq(self._subject.column, str(self._subject.id))
        )

    @staticmethod
    async def _rows(query: Any) -> Any:
        try:
            return await query.execute()
        except Exception as exc:
            raise translate_data_plane_error(exc) from exc

    async def latest_id(self) -> int:
        response = await self._rows(self._query("id").order("id", desc=True).limit(1))
        rows = cast(list[dict[str, Any]], response.data)
        return int(rows[0]["id"]) if rows else 0

    async def after(self, after_id: int, *, limit: int) -> list[dict[str, Any]]:
        query = self._query("*").gt("id", after_id).order("id").limit(limit)
        return cast(list[dict[str, Any]], (await self._rows(query)).data)

    async def count_between(self, low: int, high: int) -> int:
        query = self._query("id", count=CountMethod.exact, head=True).gt("id", low).lte("id", high)
        return int((await self._rows(query)).count or 0)

    async def ids_between(self, low: int, high: int) -> list[int]:
        query = self._query("id").gt("id", low).lte("id", high).order("id")
        return [int(row["id"]) for row in (await self._rows(query)).data]

    async def with_ids(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        query = self._query("*").in_("id", [str(i) for i in ids]).order("id")
        return cast(list[dict[str, Any]], (await self._rows(query)).data)


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


def reset_event(subject: EventSubject, *, resume_from: int, last_event_id: int) -> dict[str, Any]:
    """Told instead of a silent gap: what the client asked to resume after was pruned."""
    return {
        "id": resume_from,
        "type": "reset",
        "sessionId": str(subject.id) if subject.kind == "session" else None,
        "profileId": str(subject.id) if subject.kind == "profile" else None,
        "actor": {"type": "system", "id": "retention"},
        "payload": {
            "reason": "history_pruned",
            "lastEventId": last_event_id,
            "message": "Events after this Last-Event-ID are past their retention and were "
            "deleted: reload the state, then follow this stream.",
        },
        "createdAt": datetime.now(UTC).isoformat(),
    }


class EventService:
    def __init__(
        self, supabase: AsyncClient, settings: Settings, *, bus: EventBus, streams: StreamRegistry
    ) -> None:
        self._supabase = supabase
        self._settings = settings
        self._bus = bus
        self._streams = streams

    @property
    def credential_ttl_seconds(self) -> int:
        """Every stream ends (and its browser reconnects) before its credential expires."""
        return self._settings.events_max_stream_seconds + STREAM_CREDENTIAL_GRACE_SECONDS

    async def issue_ticket(self, *, user: UserContext) -> tuple[str, str]:
        """A ticket for the stream URL, good for one first use (only its hash is stored).

        It and what it leads to end when the access token that bought it expires.
        """
        ticket = generate_session_token()
        expires_at = await call_rpc(
            self._supabase,
            "issue_event_ticket",
            {
                "p_ticket_hash": hash_session_token(ticket),
                "p_profile_id": str(user.id),
                "p_ttl_seconds": self._settings.event_ticket_ttl_seconds,
                "p_not_after": user.expires_at.isoformat() if user.expires_at else None,
            },
        )
        return ticket, str(expires_at)

    async def open_with_ticket(self, *, ticket: str, credential: str | None) -> TicketGrant:
        """The ticket's first use, or a reconnect: the spent ticket plus a live credential
        of the same user (the stream cookie). The spent ticket alone is refused."""
        new_credential = generate_session_token()
        grant = await call_rpc(
            self._supabase,
            "open_event_stream",
            {
                "p_ticket_hash": hash_session_token(ticket),
                "p_credential_hash": hash_session_token(credential) if credential else None,
                "p_new_credential_hash": hash_session_token(new_credential),
                "p_credential_ttl_seconds": self.credential_ttl_seconds,
            },
        )
        if not grant:
            raise InvalidTicketError()
        presented = new_credential if grant["issued"] else credential
        if presented is None:  # never: a reconnect is accepted only with a credential
            raise InvalidTicketError()
        return TicketGrant(
            profile_id=UUID(str(grant["profileId"])),
            not_after=datetime.fromisoformat(str(grant["notAfter"])),
            credential=presented,
            credential_expires_at=str(grant["credentialExpiresAt"]),
        )

    async def history_floor(self) -> int:
        """Events with an id at or below this may have been deleted by retention."""
        return int(await call_rpc(self._supabase, "event_history_floor", {}) or 0)

    def open_stream(
        self,
        *,
        subject: EventSubject,
        client_ip: str,
        anonymous: bool,
        last_event_id: int | None,
        not_after: datetime | None = None,
    ) -> LiveStream:
        """A stream counted against the caps now (429 / 503 past them, see event_streams).

        The place is given back when the stream ends, or when its frames are dropped
        unstarted (a client gone before the first byte): the counts never creep up.
        """
        place = self._streams.reserve(
            StreamOwner(subject=subject.key, ip=client_bucket(client_ip), anonymous=anonymous)
        )
        lifetime = float(self._settings.events_max_stream_seconds)
        if not_after is not None:
            lifetime = min(lifetime, (not_after - datetime.now(UTC)).total_seconds())
        ends_at = time.monotonic() + lifetime
        frames = self._frames(
            subject=subject, place=place, last_event_id=last_event_id, ends_at=ends_at
        )
        weakref.finalize(frames, place.release)
        return LiveStream(frames=frames, ends_at=ends_at + STREAM_END_GRACE_SECONDS, place=place)

    async def _frames(
        self,
        *,
        subject: EventSubject,
        place: StreamPlace,
        last_event_id: int | None,
        ends_at: float,
    ) -> AsyncGenerator[StreamFrame]:
        """Replay after `last_event_id` (or start from now), then live; heartbeats between.

        The live part comes from the subject's shared feed (one read per wake-up for all its
        streams here, late commits included, see event_streams). The stream ends at
        `ends_at` (EVENTS_MAX_STREAM_SECONDS, or the expiry of the access token that allowed
        it), when the server stops it (a newer stream of its subject took its place, or it
        fell too far behind), and after a session's terminal event (the client needs that
        event; the credential is gone).
        """
        heartbeat = self._settings.events_heartbeat_seconds
        events = SubjectEvents(self._supabase, subject)
        async with self._streams.join(place, reader=events) as feed:
            # Joined before the replay reads: whatever commits after it reaches the queue.
            position = feed.cursor
            reset = None
            if last_event_id is not None:
                floor = await self.history_floor()
                if last_event_id < floor:
                    # Start from now, as a fresh stream does, and say why.
                    resume_from = max(await events.latest_id(), floor)
                    reset = reset_event(
                        subject, resume_from=resume_from, last_event_id=last_event_id
                    )
                    last_event_id = resume_from
            start = last_event_id if last_event_id is not None else position
            replayed: set[int] = set()
            yield StreamFrame("ready", cursor=start)
            if reset is not None:
                yield StreamFrame("event", reset)
            if last_event_id is not None:
                after = last_event_id
                while True:
                    rows = await events.after(after, limit=PAGE_SIZE)
                    for row in rows:
                        replayed.add(int(row["id"]))
                        yield StreamFrame("event", public_event(row))
                        if self._ends_stream(subject, row):
                            return
                    if len(rows) < PAGE_SIZE:
                        break
                    after = int(rows[-1]["id"])
            queue = place.queue
            while True:
                left = ends_at - time.monotonic()
                if left <= 0:
                    return
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=min(heartbeat, left))
                except TimeoutError:
                    if time.monotonic() >= ends_at:
                        return
                    yield StreamFrame("heartbeat")
                    continue
                if item.kind == "stopped":
                    return
                if item.kind == "error":
                    assert item.error is not None
                    raise item.error
                assert item.event is not None
                event_id = int(item.event["id"])
                if event_id <= start or event_id in replayed:
                    continue
                yield StreamFrame("event", public_event(item.event))
                if self._ends_stream(subject, item.event):
                    return

    @staticmethod
    def _ends_stream(subject: EventSubject, row: dict[str, Any]) -> bool:
        return subject.kind == "session" and row["event_type"] in SESSION_ENDING_EVENTS
