"""/api/v1/conversations: chat with the agent, owned by the user or the session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response, status

from autopilot_api.api.deps import (
    ChatServiceDep,
    ConversationServiceDep,
    CurrentAuth,
    OwnedConversation,
    ProfileExtractionServiceDep,
    SettingsDep,
    WriteOwnerDep,
    client_ip,
    set_location,
)
from autopilot_api.api.json_body import JSONBodyRoute
from autopilot_api.api.openapi import ANY_CALLER, SseEvent, sse_response
from autopilot_api.api.sse import DisconnectAwareEventSourceResponse, sse_event
from autopilot_api.models.auth import AuthContext
from autopilot_api.models.conversation import Conversation
from autopilot_api.schemas.common import (
    TIMESTAMP_PATTERN,
    CamelModel,
    ErrorResponse,
    Timestamp,
    error_responses,
    header_docs,
)
from autopilot_api.schemas.conversation import (
    ChatTurnPublic,
    ConversationCreate,
    ConversationPublic,
    ConversationWithMessages,
    MessageCreate,
    MessagePublic,
    StreamDelta,
    StreamDone,
    StreamStart,
)
from autopilot_api.services.chat_service import StreamEvent
from autopilot_api.services.profile_extraction_service import ProfileExtractionService

router = APIRouter(tags=["conversations"], route_class=JSONBodyRoute)

_STREAM_PAYLOADS: dict[str, type[CamelModel]] = {
    "start": StreamStart,
    "delta": StreamDelta,
    "done": StreamDone,
}
_SSE_DOC = sse_response(
    "With `Accept: text/event-stream`: the reply streamed as server-sent events: `start`, "
    "`delta` events, then `done` or `error`; the reply is stored either way.",
    [
        SseEvent(["start"], StreamStart, "The visitor's message is stored."),
        SseEvent(["delta"], StreamDelta, "The next piece of the reply's text."),
        SseEvent(["done"], StreamDone, "The stored reply; the stream ends."),
        SseEvent(["error"], ErrorResponse, "The reply failed (the envelope); the stream ends."),
    ],
)


@router.post(
    "",
    summary="Start a conversation",
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": header_docs("Location")},
        **error_responses(401, 403, 413, 422, 429, 503),
    },
    openapi_extra=ANY_CALLER,
)
async def create_conversation(
    request: Request,
    response: Response,
    owner: WriteOwnerDep,
    conversations: ConversationServiceDep,
    body: ConversationCreate | None = None,
) -> ConversationWithMessages:
    """Owned by the user, else the session (created if needed); opens with the agent's question."""
    started = await conversations.create_conversation(
        user_id=owner.user_id,
        session_id=owner.session_id,
        title=body.title if body else None,
        client_ip=client_ip(request, conversations.settings),
    )
    conversation = started["conversation"]
    set_location(response, request, "get_conversation", conversation_id=str(conversation["id"]))
    opening = started["opening"]
    return ConversationWithMessages(
        **ConversationPublic.from_row(conversation).model_dump(),
        messages=[MessagePublic.from_row(opening)] if opening else [],
        next_before=None,
    )


@router.get(
    "",
    summary="The caller's conversations",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 422, 503),
    openapi_extra=ANY_CALLER,
)
async def list_conversations(
    auth: CurrentAuth,
    conversations: ConversationServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> list[ConversationPublic]:
    """Most recently active first; empty for a caller with no session."""
    rows = await conversations.list_conversations(auth=auth, limit=limit)
    return [ConversationPublic.from_row(row) for row in rows]


@router.get(
    "/{conversation_id}",
    summary="A conversation with a page of its messages",
    status_code=status.HTTP_200_OK,
    responses=error_responses(401, 404, 422, 503),
    openapi_extra=ANY_CALLER,
)
async def get_conversation(
    conversation: OwnedConversation,
    conversations: ConversationServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[
        Timestamp | None,
        Query(
            description="nextBefore of the previous page (an ISO 8601 timestamp).",
            pattern=TIMESTAMP_PATTERN,
        ),
    ] = None,
) -> ConversationWithMessages:
    """The newest page first (oldest-first within it); page back with `before`."""
    messages, next_before = await conversations.get_messages_page(
        conversation_id=UUID(conversation["id"]),
        limit=limit,
        before=before,
    )
    return ConversationWithMessages(
        **ConversationPublic.from_row(conversation).model_dump(),
        messages=[MessagePublic.from_row(m) for m in messages],
        next_before=next_before,
    )


def _schedule_extraction(
    background: BackgroundTasks,
    extraction: ProfileExtractionService,
    conversation: Conversation,
    auth: AuthContext,
    message_id: str,
    address: str,
) -> None:
    owned_by_user = conversation["user_id"] is not None
    session = auth.acting_session
    background.add_task(
        extraction.run_for_message,
        conversation_id=UUID(conversation["id"]),
        message_id=message_id,
        session_id=None if owned_by_user or session is None else session.session_id,
        profile_id=auth.user.id if owned_by_user and auth.user else None,
        client_ip=address,
    )


def _wire(event: StreamEvent) -> bytes:
    """The event's data through the model the document names for it."""
    payload: CamelModel | ErrorResponse
    if event.kind == "error":
        payload = ErrorResponse.model_validate(event.data)
    elif event.kind == "done":
        payload = StreamDone(
            message=MessagePublic.from_row(event.data["message"]),
            replayed=event.data["replayed"],
        )
    else:
        payload = _STREAM_PAYLOADS[event.kind].model_validate(event.data)
    return sse_event(event.kind, payload.model_dump(mode="json", by_alias=True))


@router.post(
    "/{conversation_id}/messages",
    summary="Send a message and get the agent's reply (JSON, or streamed as SSE)",
    status_code=status.HTTP_201_CREATED,
    response_model=ChatTurnPublic,
    responses={
        200: _SSE_DOC,
        **error_responses(401, 403, 404, 409, 413, 422, 429, 503),
    },
    openapi_extra=ANY_CALLER,
)
async def post_message(
    body: MessageCreate,
    request: Request,
    conversation: OwnedConversation,
    auth: CurrentAuth,
    chat: ChatServiceDep,
    extraction: ProfileExtractionServiceDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="A retry with the same key returns the first reply; the same key "
            "with other text → 422 idempotency_key_reused (the first turn stands).",
        ),
    ] = None,
) -> Any:
    """Stores the message, runs the agent, stores the reply; extraction runs afterwards."""
    address = client_ip(request, settings)
    turn = await chat.prepare_turn(
        conversation=conversation,
        auth=auth,
        content=body.content,
        idempotency_key=idempotency_key,
        client_ip=address,
    )
    if turn.replay is None:
        _schedule_extraction(
            background, extraction, conversation, auth, turn.user_message["id"], address
        )

    if "text/event-stream" in request.headers.get("accept", ""):

        async def events() -> AsyncIterator[bytes]:
            async for event in chat.stream_reply(conversation=conversation, turn=turn):
                yield _wire(event)

        return DisconnectAwareEventSourceResponse(events(), background=background)

    result = await chat.reply(conversation=conversation, turn=turn)
    return ChatTurnPublic(
        user_message=MessagePublic.from_row(result.user_message),
        assistant_message=MessagePublic.from_row(result.assistant_message),
        replayed=result.replayed,
    )
