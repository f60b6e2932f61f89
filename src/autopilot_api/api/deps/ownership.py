"""Who owns what a request reads or creates: the conversation in the path, the owner of a
new row (a session is created for an anonymous writer who has none)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Path, Request, Response

from autopilot_api.api.deps.address import client_ip
from autopilot_api.api.deps.cookies import set_session_cookie
from autopilot_api.api.deps.identity import CurrentAuth
from autopilot_api.api.deps.services import app_state
from autopilot_api.models.auth import Owner
from autopilot_api.models.conversation import Conversation


async def owned_conversation(
    conversation_id: Annotated[UUID, Path(description="The conversation's id.")],
    request: Request,
    auth: CurrentAuth,
) -> Conversation:
    """The conversation, if the caller (user or session) owns it; anyone else gets 404."""
    conversations = app_state(request).services.conversations
    return await conversations.get_owned(conversation_id=conversation_id, auth=auth)


OwnedConversation = Annotated[Conversation, Depends(owned_conversation)]


async def get_write_owner(request: Request, response: Response, auth: CurrentAuth) -> Owner:
    """A signed-in user owns what they create; otherwise the session, created (rate-limited,
    the cookie set) when the caller has none."""
    if auth.user is not None:
        return Owner(user_id=auth.user.id, session_id=None)
    if auth.session is not None:
        return Owner(user_id=None, session_id=auth.session.session_id)
    state = app_state(request)
    created, token = await state.services.sessions.create_session(
        client_ip=client_ip(request, state.settings)
    )
    set_session_cookie(response, state.settings, token=token, expires_at=created["expires_at"])
    return Owner(user_id=None, session_id=UUID(created["id"]))


WriteOwnerDep = Annotated[Owner, Depends(get_write_owner)]


async def get_read_owner(auth: CurrentAuth) -> Owner:
    """The caller as an owner for reads: nothing is created."""
    if auth.user is not None:
        return Owner(user_id=auth.user.id, session_id=None)
    return Owner(user_id=None, session_id=auth.session.session_id if auth.session else None)


ReadOwnerDep = Annotated[Owner, Depends(get_read_owner)]
