"""Rows of `autopilot.conversations` and `autopilot.messages`."""

from __future__ import annotations

from typing import Literal, TypedDict

from autopilot_api.models.session import SessionPhase

MessageRole = Literal["user", "assistant", "system"]
MessageStatus = Literal["complete", "streaming", "aborted", "error"]


class Conversation(TypedDict):
    id: str
    user_id: str | None
    session_id: str | None
    phase: SessionPhase
    title: str | None
    created_at: str
    updated_at: str


class Message(TypedDict):
    id: str
    conversation_id: str
    role: MessageRole
    content: str
    status: MessageStatus
    reply_to: str | None
    idempotency_key: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    model: str | None
    metadata: dict[str, object]
    created_at: str


class AppendedMessage(TypedDict):
    message: Message
    replayed: bool
    reply: Message | None


class StartedConversation(TypedDict):
    conversation: Conversation
    opening: Message | None
