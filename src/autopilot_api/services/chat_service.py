"""One chat turn: store the visitor's message, get the agent's reply (whole or streamed),
store it, and leave extraction to run afterwards."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import anyio

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import (
    AppError,
    IdempotencyKeyInUseError,
    ModelUnavailableError,
    ValidationFailedError,
    field_error,
)
from autopilot_api.models.auth import AuthContext
from autopilot_api.models.conversation import Conversation, Message, MessageStatus
from autopilot_api.services.agent_service import AgentReply, AgentService, ChatOwner
from autopilot_api.services.conversation_service import ConversationService
from autopilot_api.services.discovery_profile_service import DiscoveryProfileService
from autopilot_api.services.model_budget import Spender
from autopilot_api.services.rate_limiter import RateLimiter

logger = logging.getLogger(__name__)

MESSAGE_WINDOW_SECONDS = 60


@dataclass
class ChatTurn:
    user_message: Message
    assistant_message: Message
    replayed: bool = False


@dataclass
class StreamEvent:
    kind: Literal["start", "delta", "done", "error"]
    data: dict[str, Any]


@dataclass
class PreparedTurn:
    """The stored user message, or the reply of an earlier identical request."""

    user_message: Message
    replay: Message | None
    owner: ChatOwner
    history: list[Message]
    spender: Spender


class ChatService:
    def __init__(
        self,
        settings: Settings,
        *,
        conversations: ConversationService,
        agent: AgentService,
        profiles: DiscoveryProfileService,
        rate_limiter: RateLimiter,
    ) -> None:
        self._settings = settings
        self._conversations = conversations
        self._agent = agent
        self._profiles = profiles
        self._rate_limiter = rate_limiter

    async def prepare_turn(
        self,
        *,
        conversation: Conversation,
        auth: AuthContext,
        content: str,
        idempotency_key: str | None,
        client_ip: str,
    ) -> PreparedTurn:
        if len(content) > self._settings.message_max_chars:
            raise ValidationFailedError(
                f"A message may have at most {self._settings.message_max_chars} characters.",
                details=[field_error(["body", "content"], "too long", "too_long")],
            )
        owner = await self._owner(conversation, auth)
        spender = Spender.of(
            session_id=owner.session_id,
            user_id=owner.user.id if owner.user else None,
            client_ip=client_ip,
        )
        await self._rate_limiter.hit(
            key=f"messages:{spender.visitor}",
            limit=self._settings.message_rate_limit_per_minute,
            window_seconds=MESSAGE_WINDOW_SECONDS,
        )
        conversation_id = UUID(conversation["id"])
        appended = await self._conversations.append_user_message(
            conversation_id=conversation_id, content=content, idempotency_key=idempotency_key
        )
        if appended["replayed"]:
            if appended["reply"] is None:
                raise IdempotencyKeyInUseError()
            return PreparedTurn(appended["message"], appended["reply"], owner, [], spender)
        history = await self._conversations.recent_messages(
            conversation_id=conversation_id, limit=self._settings.agent_history_messages
        )
        return PreparedTurn(appended["message"], None, owner, history, spender)

    async def _owner(self, conversation: Conversation, auth: AuthContext) -> ChatOwner:
        if conversation["user_id"] is not None:
            assert auth.user is not None
            profile = await self._profiles.get_or_create(user=auth.user)
            return ChatOwner(session_id=None, user=auth.user, progress=profile)
        session = auth.acting_session
        assert session is not None
        return ChatOwner(session_id=session.session_id, user=None, progress=session.session)

    async def _store_reply(
        self,
        conversation: Conversation,
        turn: PreparedTurn,
        reply: AgentReply,
        status: MessageStatus,
    ) -> Message:
        return await self._conversations.save_assistant_message(
            conversation_id=UUID(conversation["id"]),
            reply_to=turn.user_message["id"],
            content=reply.content,
            status=status,
            model=reply.model,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            metadata=reply.metadata,
        )

    async def reply(self, *, conversation: Conversation, turn: PreparedTurn) -> ChatTurn:
        """The whole reply; a model outage stores an `error` reply and raises 503."""
        if turn.replay is not None:
            return ChatTurn(turn.user_message, turn.replay, replayed=True)
        try:
            reply = await self._agent.generate_response(
                conversation=conversation,
                owner=turn.owner,
                history=turn.history,
                spender=turn.spender,
            )
        except ModelUnavailableError:
            await self._store_reply(conversation, turn, AgentReply(), "error")
            raise
        stored = await self._store_reply(conversation, turn, reply, "complete")
        return ChatTurn(turn.user_message, stored)

    async def stream_reply(
        self, *, conversation: Conversation, turn: PreparedTurn
    ) -> AsyncIterator[StreamEvent]:
        """start, delta…, then done (the stored reply) or error. Whatever happens, also a
        disconnect, the reply produced so far is stored when the stream ends."""
        yield StreamEvent("start", {"userMessageId": turn.user_message["id"]})
        if turn.replay is not None:
            yield StreamEvent("done", {"message": turn.replay, "replayed": True})
            return
        reply = AgentReply()
        status: MessageStatus = "aborted"
        failure: AppError | None = None
        stored: Message | None = None
        try:
            async for piece in self._agent.stream_response(
                conversation=conversation,
                owner=turn.owner,
                history=turn.history,
                spender=turn.spender,
                reply=reply,
            ):
                yield StreamEvent("delta", {"text": piece})
            status = "complete"
        except AppError as exc:
            status, failure = "error", exc
        finally:
            # One write, whatever ended the stream. Shielded: a disconnect cancels this
            # generator, and a write cut short may commit all the same while a second one
            # follows (the SQL keeps one reply per message either way).
            with anyio.CancelScope(shield=True):
                try:
                    stored = await self._store_reply(conversation, turn, reply, status)
                except AppError as exc:
                    logger.warning("could not store the %s reply: %s", status, exc.code)
                    failure = failure or exc
        if failure is not None:
            yield StreamEvent("error", failure.envelope())
        else:
            assert stored is not None
            yield StreamEvent("done", {"message": stored, "replayed": False})
