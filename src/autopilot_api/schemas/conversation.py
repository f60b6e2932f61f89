"""Wire contracts of /api/v1/conversations."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import Field

from autopilot_api.models.session import SessionPhase
from autopilot_api.schemas.common import NOT_BLANK_PATTERN, CamelInput, CamelModel


class ConversationCreate(CamelInput):
    title: str | None = Field(default=None, max_length=200)


class ConversationPublic(CamelModel):
    id: UUID
    phase: SessionPhase
    title: str | None
    owner: Literal["user", "session"]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ConversationPublic:
        return cls(
            id=row["id"],
            phase=row["phase"],
            title=row.get("title"),
            owner="user" if row.get("user_id") else "session",
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class MessageCreate(CamelInput):
    content: str = Field(
        min_length=1,
        pattern=NOT_BLANK_PATTERN,
        description="The visitor's message: not blank (white space alone).",
    )


class TokenUsage(CamelModel):
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


class MessageMetadata(CamelModel):
    """What the client may want to know about how a reply came about."""

    asked: str | None = Field(
        default=None,
        description="What the offline agent (or the opening) asked: a question key, or "
        "roi:<key> for an ROI input; the visitor's next message is taken as its answer.",
    )
    mode: Literal["offline"] | None = Field(
        default=None,
        description="offline: the offline questionnaire answered although a model is "
        "configured (see reason); null otherwise.",
    )
    reason: Literal["token_budget", "budget_unavailable"] | None = Field(
        default=None,
        description="Why: token_budget, a token budget is spent (see budget); "
        "budget_unavailable, the budgets could not be checked.",
    )
    budget: Literal["visitor", "client_ip", "instance"] | None = Field(
        default=None,
        description="The spent budget: the visitor's per day, the client address's per hour, "
        "or the whole service's per day. The model answers again once it has room.",
    )


class MessagePublic(CamelModel):
    id: UUID
    conversation_id: UUID
    role: Literal["user", "assistant", "system"]
    content: str
    status: Literal["complete", "streaming", "aborted", "error"]
    reply_to: UUID | None
    usage: TokenUsage | None
    metadata: MessageMetadata
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> MessagePublic:
        usage = None
        if row.get("total_tokens") is not None or row.get("prompt_tokens") is not None:
            usage = TokenUsage(
                prompt_tokens=row.get("prompt_tokens"),
                completion_tokens=row.get("completion_tokens"),
                total_tokens=row.get("total_tokens"),
            )
        return cls(
            id=row["id"],
            conversation_id=row["conversation_id"],
            role=row["role"],
            content=row["content"],
            status=row["status"],
            reply_to=row.get("reply_to"),
            usage=usage,
            metadata=MessageMetadata.model_validate(row.get("metadata") or {}),
            created_at=row["created_at"],
        )


class ConversationWithMessages(ConversationPublic):
    messages: list[MessagePublic] = Field(description="Oldest first within the page.")
    next_before: datetime | None = Field(
        description="Pass as ?before= to get the older page; null when there is none."
    )


class ChatTurnPublic(CamelModel):
    user_message: MessagePublic
    assistant_message: MessagePublic
    replayed: bool = Field(
        description="True when an Idempotency-Key retry returned the first reply."
    )


# --- the SSE reply stream of POST /conversations/{id}/messages ---------------------------
class StreamStart(CamelModel):
    """`event: start`: the visitor's message is stored."""

    user_message_id: UUID


class StreamDelta(CamelModel):
    """`event: delta`: the next piece of the reply's text."""

    text: str


class StreamDone(CamelModel):
    """`event: done`: the stored reply (the stream ends)."""

    message: MessagePublic
    replayed: bool = Field(
        description="True when an Idempotency-Key retry returned the first reply."
    )
