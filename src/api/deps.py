"""Dependencies: thin readers of the lifespan state and the service providers.

Routes use the `Annotated` aliases defined here, never an inline `Depends()`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from supabase import AsyncClient

from src.core.config import Settings
from src.core.state import AppState
from src.services.health_service import HealthService


def get_app_state(request: Request) -> AppState:
    state: AppState = request.state.app_state
    return state


AppStateDep = Annotated[AppState, Depends(get_app_state)]


def get_settings_dep(state: AppStateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_supabase(state: AppStateDep) -> AsyncClient:
    return state.supabase


SupabaseDep = Annotated[AsyncClient, Depends(get_supabase)]


def get_health_service(supabase: SupabaseDep) -> HealthService:
    return HealthService(supabase)


HealthServiceDep = Annotated[HealthService, Depends(get_health_service)]
