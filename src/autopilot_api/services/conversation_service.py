"""Conversations and their messages, owned by a user or by an anonymous session."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from supabase import AsyncClient

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import ConversationNotFoundError
from autopilot_api.core.supabase import call_rpc, translate_data_plane_error
from autopilot_api.models.auth import AuthContext, Owner
from autopilot_api.models.conversation import (
    AppendedMessage,
    Conversation,
    Message,
    MessageStatus,
    StartedConversation,
)
from autopilot_api.services.opening import OPENING_STEPS
from autopilot_api.services.rate_limiter import RateLimiter
from autopilot_api.services.write_limits import WriteLimits


class ConversationService:
    def __init__(
        self, supabase: AsyncClient, settings: Settings, *, rate_limiter: RateLimiter
    ) -> None:
        self._supabase = supabase
        self._settings = settings
        self._limits = WriteLimits(rate_limiter, settings)

    @property
    def settings(self) -> Settings:
        """What it runs with; the routes read the client address through it."""
        return self._settings

    async def _select(self, query: Any) -> list[dict[str, Any]]:
        try:
            response = await query.execute()
        except Exception as exc:
            raise translate_data_plane_error(exc) from exc
        return cast(list[dict[str, Any]], response.data)

    async def create_conversation(
        self,
        *,
        user_id: UUID | None = None,
        session_id: UUID | None = None,
        title: str | None = None,
        client_ip: str,
    ) -> StartedConversation:
        """The conversation and the agent's opening message, stored in one transaction.
        Rate-limited per owner and, for an anonymous session, per client IP; capped per
        owner in SQL (422 too_many_conversations)."""
        await self._limits.create(
            kind="conversation",
            owner=Owner(user_id=user_id, session_id=session_id),
            client_ip=client_ip,
        )
        started = await call_rpc(
            self._supabase,
            "create_conversation",
            {
                "p_user_id": str(user_id) if user_id else None,
                "p_session_id": str(session_id) if session_id else None,
                "p_title": title,
                "p_opening": OPENING_STEPS,
                "p_max_per_owner": self._settings.conversations_max_per_owner,
            },
        )
        return cast(StartedConversation, started)

    async def create_conversation_for_session(
        self, *, session_id: UUID, client_ip: str, title: str | None = None
    ) -> Conversation:
        started = await self.create_conversation(
            session_id=session_id, title=title, client_ip=client_ip
        )
        return started["conversation"]

    async def get_owned(self, *, conversation_id: UUID, auth: AuthContext) -> Conversation:
        """The conversation if the caller owns it; anyone else gets 404 (no existence leak)."""
        if auth.is_empty:
            raise ConversationNotFoundError()
        rows = await self._select(
            self._supabase.table("conversations").select("*").eq("id", str(conversation_id)),
        )
        if not rows:
            raise ConversationNotFoundError()
        row = cast(Conversation, rows[0])
        owned_by_user = auth.user is not None and row["user_id"] == str(auth.user.id)
        session = auth.acting_session
        owned_by_session = session is not None and row["session_id"] == str(session.session_id)
        if not (owned_by_user or owned_by_session):
            raise ConversationNotFoundError()
        return row

    async def can_access_by_session(self, *, conversation_id: UUID, session_id: UUID) -> bool:
        rows = await self._select(
            self._supabase.table("conversations")
            .select("id")
            .eq("id", str(conversation_id))
            .eq("session_id", str(session_id)),
        )
        return bool(rows)

    async def list_conversations(self, *, auth: AuthContext, limit: int = 50) -> list[Conversation]:
        """The caller's conversations, most recently active first (a user's own if signed in)."""
        query = self._supabase.table("conversations").select("*")
        if auth.user is not None:
            query = query.eq("user_id", str(auth.user.id))
        elif auth.acting_session is not None:
            query = query.eq("session_id", str(auth.acting_session.session_id))
        else:
            return []
        rows = await self._select(query.order("updated_at", desc=True).limit(limit))
        return cast(list[Conversation], rows)

    async def get_messages_page(
        self, *, conversation_id: UUID, limit: int, before: str | None = None
    ) -> tuple[list[Message], str | None]:
        """The newest `limit` messages older than `before`, oldest first, and the next cursor."""
        query = (
            self._supabase.table("messages").select("*").eq("conversation_id", str(conversation_id))
        )
        if before is not None:
            query = query.lt("created_at", before)
        rows = await self._select(query.order("created_at", desc=True).limit(limit + 1))
        has_more = len(rows) > limit
        page = cast(list[Message], list(reversed(rows[:limit])))
        return page, (page[0]["created_at"] if has_more and page else None)

    async def recent_messages(self, *, conversation_id: UUID, limit: int) -> list[Message]:
        page, _ = await self.get_messages_page(conversation_id=conversation_id, limit=limit)
        return page

    async def append_user_message(
        self, *, conversation_id: UUID, content: str, idempotency_key: str | None = None
    ) -> AppendedMessage:
        result = await call_rpc(
            self._supabase,
            "append_user_message",
            {
                "p_conversation_id": str(conversation_id),
                "p_content": content,
                "p_idempotency_key": idempotency_key,
                "p_max_messages": self._settings.messages_max_per_conversation,
            },
        )
        return cast(AppendedMessage, result)

    async def save_assistant_message(
        self,
        *,
        conversation_id: UUID,
        reply_to: str,
        content: str,
        status: MessageStatus,
        model: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Message:
        row = await call_rpc(
            self._supabase,
            "save_assistant_message",
            {
                "p_conversation_id": str(conversation_id),
                "p_reply_to": reply_to,
                "p_content": content,
                "p_status": status,
                "p_model": model,
                "p_prompt_tokens": prompt_tokens,
                "p_completion_tokens": completion_tokens,
                "p_metadata": metadata or {},
            },
        )
        return cast(Message, row)

    async def transfer_to_profile(self, *, session_id: UUID, user_id: UUID) -> int:
        """Move a claimed session's conversations to the user (the claim's own SQL)."""
        moved = await call_rpc(
            self._supabase,
            "transfer_conversations_to_profile",
            {"p_session_id": str(session_id), "p_user_id": str(user_id)},
        )
        return int(moved)
