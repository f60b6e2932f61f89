"""The composition root: every shared client and service of a process, built once.

The lifespan (main.py) opens it for the app, and `autopilot-api cleanup` (cli.py) for one
command; the dependency providers (api/deps/services.py) only read what it built. Services
are shared by every request, so they keep nothing of a request on `self`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from openai import AsyncOpenAI
from supabase import AsyncClient

from autopilot_api.core.config import Settings
from autopilot_api.core.openai import create_openai_client
from autopilot_api.core.security import TokenVerifier
from autopilot_api.services.admin_service import AdminService
from autopilot_api.services.agent_service import AgentService
from autopilot_api.services.chat_service import ChatService
from autopilot_api.services.conversation_service import ConversationService
from autopilot_api.services.discovery_profile_service import DiscoveryProfileService
from autopilot_api.services.event_bus import EventBus, create_event_bus
from autopilot_api.services.event_service import EventService
from autopilot_api.services.event_streams import StreamRegistry
from autopilot_api.services.health_service import HealthService
from autopilot_api.services.model_budget import ModelBudget, create_model_budget
from autopilot_api.services.profile_extraction_service import ProfileExtractionService
from autopilot_api.services.rate_limiter import RateLimiter, create_rate_limiter
from autopilot_api.services.search_session_service import SearchSessionService
from autopilot_api.services.session_service import SessionService
from autopilot_api.services.write_limits import WriteLimits

# The token verifier's JWKS fetches, the one outbound HTTP client besides the data plane's.
HTTP_TIMEOUT_SECONDS = 5.0


def _no_problem() -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Services:
    health: HealthService
    profiles: DiscoveryProfileService
    sessions: SessionService
    conversations: ConversationService
    agent: AgentService
    extraction: ProfileExtractionService
    chat: ChatService
    events: EventService
    admin: AdminService
    searches: SearchSessionService
    write_limits: WriteLimits


@dataclass(frozen=True, slots=True)
class AppState:
    """What the lifespan makes once and every request reads (typed: `request.state.app_state`)."""

    settings: Settings
    token_verifier: TokenVerifier
    # Started by the lifespan: its Redis listener wakes this process's streams.
    bus: EventBus
    services: Services


def build_services(
    settings: Settings,
    supabase: AsyncClient,
    *,
    openai: AsyncOpenAI | None,
    rate_limiter: RateLimiter,
    bus: EventBus,
    model_budget: ModelBudget,
    streams: StreamRegistry,
    data_plane_problem: Callable[[], str | None] = _no_problem,
) -> Services:
    """Each service once, handed the shared clients and the services it needs."""
    profiles = DiscoveryProfileService(supabase, bus=bus)
    sessions = SessionService(
        supabase, settings, profiles=profiles, rate_limiter=rate_limiter, bus=bus
    )
    conversations = ConversationService(supabase, settings, rate_limiter=rate_limiter)
    agent = AgentService(
        openai, settings, sessions=sessions, profiles=profiles, budget=model_budget
    )
    return Services(
        health=HealthService(supabase, data_plane_problem=data_plane_problem),
        profiles=profiles,
        sessions=sessions,
        conversations=conversations,
        agent=agent,
        extraction=ProfileExtractionService(
            openai, settings, supabase, bus=bus, budget=model_budget
        ),
        chat=ChatService(
            settings,
            conversations=conversations,
            agent=agent,
            profiles=profiles,
            rate_limiter=rate_limiter,
        ),
        events=EventService(supabase, settings, bus=bus, streams=streams),
        admin=AdminService(supabase, settings, model_budget=model_budget),
        searches=SearchSessionService(supabase, settings, rate_limiter=rate_limiter),
        write_limits=WriteLimits(rate_limiter, settings),
    )


@asynccontextmanager
async def open_app_state(
    settings: Settings,
    supabase: AsyncClient,
    *,
    data_plane_problem: Callable[[], str | None] = _no_problem,
) -> AsyncIterator[AppState]:
    """The shared clients and every service on the given data plane client; closed (the
    data plane client excepted: its opener closes it) on the way out. Builds, never
    connects: what runs in the background (the event bus's listener) is started by the
    lifespan."""
    openai = create_openai_client(settings)
    http = httpx.AsyncClient(timeout=httpx.Timeout(HTTP_TIMEOUT_SECONDS))
    rate_limiter = create_rate_limiter(settings.redis_url)
    bus = create_event_bus(settings.redis_url)
    model_budget = create_model_budget(settings)
    streams = StreamRegistry.for_settings(settings, bus=bus)
    try:
        yield AppState(
            settings=settings,
            token_verifier=TokenVerifier(
                jwt_secrets=settings.jwt_secrets,
                jwks_url=settings.jwks_url,
                issuer=settings.jwt_issuer,
                http_client=http,
            ),
            bus=bus,
            services=build_services(
                settings,
                supabase,
                openai=openai,
                rate_limiter=rate_limiter,
                bus=bus,
                model_budget=model_budget,
                streams=streams,
                data_plane_problem=data_plane_problem,
            ),
        )
    finally:
        await streams.close()
        await bus.close()
        await rate_limiter.close()
        await model_budget.close()
        await http.aclose()
        if openai is not None:
            await openai.close()
