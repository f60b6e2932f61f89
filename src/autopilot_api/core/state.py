"""What the lifespan makes once and every request reads: typed, overridable in tests."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from openai import AsyncOpenAI
from supabase import AsyncClient

from autopilot_api.core.config import Settings
from autopilot_api.core.security import TokenVerifier
from autopilot_api.services.event_bus import EventBus
from autopilot_api.services.rate_limiter import RateLimiter


@dataclass
class AppState:
    settings: Settings
    supabase: AsyncClient
    openai: AsyncOpenAI | None
    http: httpx.AsyncClient
    token_verifier: TokenVerifier
    rate_limiter: RateLimiter
    bus: EventBus
