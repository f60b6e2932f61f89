"""The lifespan state, the settings and the service providers: thin readers of what the
composition root built once (composition.py); nothing is built per request.

Every provider reads the state from the request itself rather than depending on a state
node: FastAPI solves each node of the tree on every request (a cached one too), and a
nested node costs more than the attribute read it wraps.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from autopilot_api.composition import AppState, Services
from autopilot_api.core.config import Settings
from autopilot_api.services.admin_service import AdminService
from autopilot_api.services.chat_service import ChatService
from autopilot_api.services.conversation_service import ConversationService
from autopilot_api.services.discovery_profile_service import DiscoveryProfileService
from autopilot_api.services.event_service import EventService
from autopilot_api.services.health_service import HealthService
from autopilot_api.services.profile_extraction_service import ProfileExtractionService
from autopilot_api.services.search_session_service import SearchSessionService
from autopilot_api.services.session_service import SessionService


def app_state(request: Request) -> AppState:
    state: AppState = request.state.app_state
    return state


def services(request: Request) -> Services:
    return app_state(request).services


async def get_settings_dep(request: Request) -> Settings:
    return app_state(request).settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_health_service(request: Request) -> HealthService:
    return services(request).health


HealthServiceDep = Annotated[HealthService, Depends(get_health_service)]


async def get_discovery_profile_service(request: Request) -> DiscoveryProfileService:
    return services(request).profiles


DiscoveryProfileServiceDep = Annotated[
    DiscoveryProfileService, Depends(get_discovery_profile_service)
]


async def get_session_service(request: Request) -> SessionService:
    return services(request).sessions


SessionServiceDep = Annotated[SessionService, Depends(get_session_service)]


async def get_conversation_service(request: Request) -> ConversationService:
    return services(request).conversations


ConversationServiceDep = Annotated[ConversationService, Depends(get_conversation_service)]


async def get_profile_extraction_service(request: Request) -> ProfileExtractionService:
    return services(request).extraction


ProfileExtractionServiceDep = Annotated[
    ProfileExtractionService, Depends(get_profile_extraction_service)
]


async def get_chat_service(request: Request) -> ChatService:
    return services(request).chat


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]


async def get_event_service(request: Request) -> EventService:
    return services(request).events


EventServiceDep = Annotated[EventService, Depends(get_event_service)]


async def get_admin_service(request: Request) -> AdminService:
    return services(request).admin


AdminServiceDep = Annotated[AdminService, Depends(get_admin_service)]


async def get_search_session_service(request: Request) -> SearchSessionService:
    return services(request).searches


SearchSessionServiceDep = Annotated[SearchSessionService, Depends(get_search_session_service)]
