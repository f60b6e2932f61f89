"""What the lifespan makes once and every request reads: typed, overridable in tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from openai import AsyncOpenAI
from supabase import AsyncClient

from autopilot_api.core.config import Settings
from autopilot_api.core.security import TokenVerifier
from autopilot_api.services.event_bus import EventBus
from autopilot_api.services.event_streams import StreamRegistry
from autopilot_api.services.model_budget import ModelBudget
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
    # The model's token budgets and the day's usage (Redis when REDIS_URL is set).
    model_budget: ModelBudget
    # Why a data plane this process started is down for good, or None (see /healthz).
    data_plane_problem: Callable[[], str | None] = field(default=lambda: None)
    # The live event streams this process holds (made on first use when not given).
    streams: StreamRegistry | None = None

    def stream_registry(self) -> StreamRegistry:
        if self.streams is None:
            self.streams = StreamRegistry.for_settings(self.settings, bus=self.bus)
        return self.streams
