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
from autopilot_api.services.event_bus import EventBus, profile_subject, session_subject
from autopilot_api.services.event_streams import StreamPlace, StreamRegistry

logger = logging.getLogger(__name__)

# Events are re-read this far back on every poll and sent once (see session_events).
LATE_COMMIT_WINDOW = timedelta(seconds=30)
FETCH_LIMIT = 500
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

    async def history_floor(self) -> int:
        """Events with an id at or below this may have been deleted by retention."""
        return int(await call_rpc(self._supabase, "event_history_floor", {}) or 0)

    def frames(
        self,
        *,
        subject: EventSubject,
        last_event_id: int | None,
        not_after: datetime | None = None,
    ) -> AsyncGenerator[StreamFrame]:
        """The stream's frames, counted against the instance's cap now (503 past it).

        The place is given back when the stream ends, or when the generator is dropped
        unstarted (a client gone before the first byte): the count never creeps up.
        """
        place = self._streams.reserve()
        stream = self._frames(
            subject=subject, place=place, last_event_id=last_event_id, not_after=not_after
        )
        weakref.finalize(stream, place.release)
        return stream

    async def _frames(
        self,
        *,
        subject: EventSubject,
        place: StreamPlace,
        last_event_id: int | None,
        not_after: datetime | None,
    ) -> AsyncGenerator[StreamFrame]:
        """Replay after `last_event_id` (or start from now), then live; heartbeats between.

        The live part comes from the subject's shared feed (one read per wake-up for all its
        streams here; it re-reads a short window so a late commit is still sent once). The
        stream ends after EVENTS_MAX_STREAM_SECONDS, never outlives `not_after` (the access
        token that allowed it), ends when a newer stream of its subject evicts it, and after
        a session's terminal event (the client needs that event; the credential is gone).
        """
        heartbeat = self._settings.events_heartbeat_seconds
        lifetime = float(self._settings.events_max_stream_seconds)
        if not_after is not None:
            lifetime = min(lifetime, (not_after - datetime.now(UTC)).total_seconds())
        ends_at = time.monotonic() + lifetime
        async with self._streams.join(
            place=place,
            key=subject.key,
            fetch=lambda after: self._fetch(subject, after),
            latest_id=lambda: self.latest_event_id(subject),
        ) as (feed, slot):
            # Joined before the replay reads: whatever commits after it reaches the queue.
            position = feed.cursor
            reset = None
            if last_event_id is not None:
                floor = await self.history_floor()
                if last_event_id < floor:
                    # Start from now, as a fresh stream does, and say why.
                    resume_from = max(await self.latest_event_id(subject), floor)
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
                    rows = await self._fetch(subject, after)
                    for row in rows:
                        event_id = int(row["id"])
                        if event_id <= start or event_id in replayed:
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
                left = ends_at - time.monotonic()
                if left <= 0:
                    return
                try:
                    item = await asyncio.wait_for(slot.queue.get(), timeout=min(heartbeat, left))
                except TimeoutError:
                    if time.monotonic() >= ends_at:
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
                if event_id <= start or event_id in replayed:
                    continue
                yield StreamFrame("event", public_event(item.event))
                if self._ends_stream(subject, item.event):
                    return

    @staticmethod
    def _ends_stream(subject: EventSubject, row: dict[str, Any]) -> bool:
        return subject.kind == "session" and row["event_type"] in SESSION_ENDING_EVENTS

    @staticmethod
    def _forget_old(sent: dict[int, float]) -> None:
        horizon = time.monotonic() - 2 * LATE_COMMIT_WINDOW.total_seconds()
        for event_id in [i for i, at in sent.items() if at < horizon]:
            del sent[event_id]
