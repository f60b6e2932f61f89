"""Service methods the seed plan names that no route calls directly, against the real
data plane through a Supabase client made as the lifespan makes it."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from supabase import AsyncClient

from autopilot_api.core.config import Settings
from autopilot_api.core.errors import SessionNotFoundError
from autopilot_api.core.supabase import (
    close_supabase_client,
    create_supabase_client,
    endpoint_from_settings,
)
from autopilot_api.services.conversation_service import ConversationService
from autopilot_api.services.rate_limiter import InMemoryRateLimiter
from tests.fixtures.factories import make_user, start_session

ASYNC = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def supabase(settings: Settings) -> AsyncIterator[AsyncClient]:
    client = create_supabase_client(endpoint_from_settings(settings), settings)
    try:
        yield client
    finally:
        await close_supabase_client(client)


@ASYNC
class TestConversationServiceMethods:
    async def test_session_access_and_transfer_to_profile(
        self,
        client: httpx.AsyncClient,
        supabase: AsyncClient,
        settings: Settings,
        rest: httpx.AsyncClient,
    ) -> None:
        token = await start_session(client)
        token_hash = hashlib.sha256(token.encode()).hexdigest()
        row = (await rest.get("/sessions", params={"token_hash": f"eq.{token_hash}"})).json()[0]
        session_id = uuid.UUID(row["id"])
        conversations = ConversationService(supabase, settings, rate_limiter=InMemoryRateLimiter())

        created = await conversations.create_conversation_for_session(
            session_id=session_id, client_ip="203.0.113.9", title="t"
        )
        conversation_id = uuid.UUID(created["id"])
        assert await conversations.can_access_by_session(
            conversation_id=conversation_id, session_id=session_id
        )
        assert not await conversations.can_access_by_session(
            conversation_id=conversation_id, session_id=uuid.uuid4()
        )

        user = make_user(settings)
        with pytest.raises(SessionNotFoundError):  # not claimed by this user yet
            await conversations.transfer_to_profile(session_id=session_id, user_id=user.id)
        assert (
            await client.post("/api/v1/sessions/claim", headers=user.headers)
        ).status_code == 200
        # A conversation the session gained after the claim (a request that raced it) moves too.
        await rest.post("/conversations", json={"session_id": str(session_id), "title": "late"})
        assert await conversations.transfer_to_profile(session_id=session_id, user_id=user.id) == 1
        mine = await rest.get("/conversations", params={"user_id": f"eq.{user.id}"})
        assert {c["title"] for c in mine.json()} == {"t", "late"}
